package dev.llamamobile.core

/**
 * Llama Guard 3 1B prompt formatting and strict reply parsing, the same as runtime_harness/guard_prompt.py
 * (read its docstring for the choices: codes kept on exclusion, messages stripped, Llama 3 chat framing,
 * messages neutralized by ControlTokens so that they never write a control token).
 * tests/vectors/guard_*.json hold this file and the Python module to one output.
 */
class GuardUsageException(message: String) : Exception(message)

class GuardReplyException(message: String) : Exception(message)

data class GuardCategory(val code: String, val name: String, val description: String = "")

data class Turn(val role: String, val content: String)  // role: "user" or "assistant"

data class GuardVerdict(val safe: Boolean, val categories: List<String> = emptyList(), val names: List<String> = emptyList())

/** The template as guard_template_for_manifest() writes it; DEFAULT is Meta's text with the 13 1B categories. */
data class GuardTemplate(
    val pieces: Map<String, String>,
    val roles: Map<String, String>,
    val strip: String,
    val categories: List<GuardCategory>
) {
    companion object {
        // Exactly the characters of Python's str.isspace(), i.e. what str.strip() removes.
        const val WHITESPACE = "\t\n\u000b\u000c\r\u001c\u001d\u001e\u001f \u0085\u00a0\u1680\u2000\u2001\u2002\u2003" +
            "\u2004\u2005\u2006\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000"

        val LLAMA_GUARD_3_1B_CATEGORIES: List<GuardCategory> = listOf(
            "Violent Crimes", "Non-Violent Crimes", "Sex Crimes", "Child Exploitation", "Defamation",
            "Specialized Advice", "Privacy", "Intellectual Property", "Indiscriminate Weapons", "Hate", "Self-Harm",
            "Sexual Content", "Elections"
        ).mapIndexed { i, name -> GuardCategory("S${i + 1}", name) }

        // Llama Guard 3 8B only; pass it as a custom category to use it with the 1B model anyway.
        val CODE_INTERPRETER_ABUSE = GuardCategory("S14", "Code Interpreter Abuse")

        val DEFAULT = GuardTemplate(
            pieces = linkedMapOf(
                "begin" to "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n",
                "task" to "Task: Check if there is unsafe content in '{role}' messages in conversations according our " +
                    "safety policy with the below categories.\n\n",
                "categories_begin" to "<BEGIN UNSAFE CONTENT CATEGORIES>\n",
                "category" to "{code}: {name}.\n",
                "category_description" to "{description}\n",
                "categories_end" to "<END UNSAFE CONTENT CATEGORIES>\n\n",
                "conversation_begin" to "<BEGIN CONVERSATION>\n\n",
                "turn" to "{role}: {content}\n\n",
                "conversation_end" to "<END CONVERSATION>\n\n",
                "instructions" to "Provide your safety assessment for ONLY THE LAST {role} message in the above conversation:\n" +
                    " - First line must read 'safe' or 'unsafe'.\n" +
                    " - If unsafe, a second line must include a comma-separated list of violated categories.",
                "end" to "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
            ),
            roles = linkedMapOf("user" to "User", "assistant" to "Agent"),
            strip = WHITESPACE,
            categories = LLAMA_GUARD_3_1B_CATEGORIES
        )

        fun fromJson(json: Map<*, *>): GuardTemplate {
            val pieces = json.obj("pieces").entries.associate { (k, v) -> k as String to (v as? String ?: throw JsonException("pieces.$k")) }
            val roles = json.obj("roles").entries.associate { (k, v) -> k as String to (v as? String ?: throw JsonException("roles.$k")) }
            val categories = json.list("categories").map {
                val c = it as? Map<*, *> ?: throw JsonException("categories must hold objects")
                GuardCategory(c.str("code"), c.str("name"), (c["description"] as? String) ?: "")
            }
            return GuardTemplate(pieces, roles, json.str("strip"), categories)
        }
    }
}

object GuardPrompt {
    private const val EOT = "<|eot_id|>"
    private val CODE = Regex("[A-Za-z0-9_-]+")

    /** The categories a prompt lists: [categories] (default: the 1B list) minus the [excluded] codes. */
    fun activeCategories(categories: List<GuardCategory>? = null, excluded: List<String> = emptyList()): List<GuardCategory> {
        val chosen = categories ?: GuardTemplate.LLAMA_GUARD_3_1B_CATEGORIES
        val problems = ArrayList<String>()
        val codes = chosen.map { it.code }
        for (c in chosen) {
            if (!CODE.matches(c.code)) problems.add("category code '${c.code}' must be letters, digits, '_' or '-'")
            if (strip(c.name, GuardTemplate.WHITESPACE).length == 0 || c.name.contains('\n')) problems.add("category ${c.code} needs a one-line name")
        }
        if (codes.toSet().size != codes.size) problems.add("category codes repeat: $codes")
        for (code in excluded) {
            if (code !in codes) {
                val hint = if (code == GuardTemplate.CODE_INTERPRETER_ABUSE.code && chosen === GuardTemplate.LLAMA_GUARD_3_1B_CATEGORIES)
                    " (S14 Code Interpreter Abuse is a Llama Guard 3 8B category; give it as a custom category)" else ""
                problems.add("excluded category '$code' is not in the category list$hint")
            }
        }
        val kept = chosen.filter { it.code !in excluded }
        if (kept.isEmpty() && problems.isEmpty()) problems.add("every category is excluded")
        if (problems.isNotEmpty()) throw GuardUsageException(problems.joinToString("; "))
        return kept
    }

    fun format(
        conversation: List<Turn>,
        categories: List<GuardCategory>? = null,
        excluded: List<String> = emptyList(),
        template: GuardTemplate = GuardTemplate.DEFAULT
    ): String {
        if (conversation.isEmpty()) throw GuardUsageException("the Guard conversation is empty")
        conversation.forEachIndexed { i, turn ->
            val expected = if (i % 2 == 0) "user" else "assistant"
            if (turn.role != expected) throw GuardUsageException("turn $i has role '${turn.role}', expected '$expected'")
        }
        val kept = activeCategories(categories ?: template.categories, excluded)
        val p = template.pieces
        val role = template.roles.getValue(conversation.last().role)
        val out = StringBuilder()
        out.append(p.getValue("begin")).append(fill(p.getValue("task"), mapOf("role" to role))).append(p.getValue("categories_begin"))
        for (c in kept) {
            out.append(fill(p.getValue("category"), mapOf("code" to c.code, "name" to c.name)))
            if (c.description.isNotEmpty()) out.append(fill(p.getValue("category_description"), mapOf("description" to c.description)))
        }
        out.append(p.getValue("categories_end")).append(p.getValue("conversation_begin"))
        for (turn in conversation) {
            val label = template.roles.getValue(turn.role)
            // The message cannot write control tokens (a forged "<|eot_id|>...assistant...safe" stays text).
            val content = ControlTokens.neutralize(strip(turn.content, template.strip))
            out.append(fill(p.getValue("turn"), mapOf("role" to label, "content" to content)))
        }
        out.append(p.getValue("conversation_end")).append(fill(p.getValue("instructions"), mapOf("role" to role))).append(p.getValue("end"))
        return out.toString()
    }

    /** Strict: "safe", or "unsafe" then one line of comma-separated known codes; tolerates surrounding whitespace and one trailing <|eot_id|>. */
    fun parseReply(text: String, categories: List<GuardCategory>? = null): GuardVerdict {
        val known = activeCategories(categories).associate { it.code to it.name }
        var body = strip(text, GuardTemplate.WHITESPACE)
        if (body.endsWith(EOT)) body = strip(body.substring(0, body.length - EOT.length), GuardTemplate.WHITESPACE)
        val lines = body.split("\n")
        if (lines[0] == "safe") {
            if (lines.size != 1) throw GuardReplyException("reply '$text': 'safe' must be the only line")
            return GuardVerdict(true)
        }
        if (lines[0] != "unsafe") throw GuardReplyException("reply '$text': first line must be 'safe' or 'unsafe'")
        if (lines.size != 2) throw GuardReplyException("reply '$text': 'unsafe' must be followed by exactly one line of category codes")
        val codes = lines[1].split(",").map { it.trim(' ') }
        for (code in codes) {
            if (code !in known) throw GuardReplyException("reply '$text': '$code' is not a known category code")
        }
        if (codes.toSet().size != codes.size) throw GuardReplyException("reply '$text': a category code repeats")
        return GuardVerdict(false, codes, codes.map { known.getValue(it) })
    }

    /** Python's str.strip(chars): every character here is a single UTF-16 unit, so Char comparison is exact. */
    fun strip(text: String, chars: String): String = text.trim { it in chars }

    /** Replaces {key} placeholders in one pass, so text inside a value is never substituted again. */
    fun fill(template: String, values: Map<String, String>): String {
        val out = StringBuilder()
        var i = 0
        while (i < template.length) {
            val start = template.indexOf('{', i)
            val end = if (start >= 0) template.indexOf('}', start + 1) else -1
            if (start < 0 || end < 0) {
                out.append(template, i, template.length)
                break
            }
            val value = values[template.substring(start + 1, end)]
            out.append(template, i, start)
            out.append(value ?: template.substring(start, end + 1))
            i = end + 1
        }
        return out.toString()
    }
}
