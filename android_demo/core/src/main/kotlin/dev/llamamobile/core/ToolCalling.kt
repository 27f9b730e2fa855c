package dev.llamamobile.core

import java.math.BigDecimal

/** One tool call: a name and its arguments (a JSON object: String, Long, Double, Boolean, null, List, Map). */
data class ToolCall(val name: String, val arguments: Map<String, Any?>) {
    companion object {
        fun fromJson(json: Any?): ToolCall {
            val m = json as? Map<*, *> ?: throw ChatTemplateException("a tool call must be {\"name\": ..., \"arguments\": {...}}")
            val name = m["name"] as? String ?: throw ChatTemplateException("a tool call needs a name")
            val args = m["arguments"] ?: emptyMap<String, Any?>()
            if (args !is Map<*, *>) throw ChatTemplateException("the arguments of $name must be an object")
            return ToolCall(name, args.entries.associate { (k, v) -> k as String to v })
        }
    }
}

/** A tool in Meta's shape: parameters = {"type": "dict", "required": [...], "properties": {...}}. */
data class Tool(val name: String, val description: String, val required: List<String>, val properties: Map<String, Any?>) {
    fun toJson(): Map<String, Any?> = linkedMapOf(
        "name" to name, "description" to description,
        "parameters" to linkedMapOf("type" to "dict", "required" to required, "properties" to properties)
    )
}

/** A reply: calls, or text; [error] says why a reply that looked like a call is not a valid one. */
data class ParsedReply(val text: String, val calls: List<ToolCall> = emptyList(), val error: String? = null) {
    val isCall: Boolean get() = calls.isNotEmpty()
}

class ToolDefinitionException(message: String) : Exception(message)

/**
 * Tool calling as Llama 3.2 does it: the same formatter and strict parser as runtime_harness/tools.py (read its
 * docstring), checked by tests/vectors/tool_prompts.json and tool_replies.json.
 */
object ToolCalling {
    /** Meta's text, word for word (llama_models llama3_2/text_prompt_format.md). */
    const val INSTRUCTIONS =
        "You are an expert in composing functions. You are given a question and a set of possible functions.\n" +
            "Based on the question, you will need to make one or more function/tool calls to achieve the purpose.\n" +
            "If none of the function can be used, point it out. If the given question lacks the parameters required " +
            "by the function,\nalso point it out. You should only return the function call in tools call sections.\n\n" +
            "If you decide to invoke any of the function(s), you MUST put it in the format of " +
            "[func_name1(params_name1=params_value1, params_name2=params_value2...), func_name2(params)]\n" +
            "You SHOULD NOT include any other text in the response.\n\n" +
            "Here is a list of functions in JSON format that you can invoke.\n\n"
    const val PYTHON_TAG = "<|python_tag|>"
    private val NAME = Regex("[A-Za-z_][A-Za-z0-9_.\\-]*")

    /** OpenAI-style {"type": "function", "function": {...}} or bare {"name", "description", "parameters"}. */
    fun readTools(json: Any?): List<Tool> {
        val data = (json as? Map<*, *>)?.get("tools") as? List<*> ?: json
        val list = data as? List<*> ?: throw ToolDefinitionException("tools must be a JSON list of function definitions")
        val tools = ArrayList<Tool>()
        val problems = ArrayList<String>()
        for ((i, item) in list.withIndex()) {
            val number = i + 1
            val spec = (if (item is Map<*, *> && item["type"] == "function") item["function"] else item) as? Map<*, *>
            if (spec == null) { problems.add("tool $number is not an object"); continue }
            val name = spec["name"] as? String
            if (name == null || !NAME.matches(name)) { problems.add("tool $number has no valid name"); continue }
            val description = spec["description"] ?: ""
            if (description !is String) problems.add("tool $name: description must be a string")
            val params = spec["parameters"] ?: emptyMap<String, Any?>()
            val properties = (params as? Map<*, *>)?.let { it["properties"] ?: emptyMap<String, Any?>() }
            val required = (params as? Map<*, *>)?.let { it["required"] ?: emptyList<String>() }
            if (properties !is Map<*, *> || required !is List<*> || !required.all { it is String }) {
                problems.add("tool $name: parameters must be a JSON schema object with properties and required")
                continue
            }
            if (tools.any { it.name == name }) problems.add("tool $name is defined twice")
            tools.add(Tool(name, description as? String ?: "", required.map { it as String },
                properties.entries.associate { (k, v) -> k as String to v }))
        }
        if (problems.isNotEmpty()) throw ToolDefinitionException(problems.joinToString("; "))
        return tools
    }

    fun systemPrompt(tools: List<Tool>, system: String? = null): String =
        INSTRUCTIONS + JsonWriter.write(tools.map { it.toJson() }, indent = 4) +
            (if (system.isNullOrEmpty()) "" else "\n\n$system")

    /** The conversation with the tools in its system turn (its own system prompt kept after them). */
    fun withTools(messages: List<ChatMessage>, tools: List<Tool>): List<ChatMessage> {
        if (tools.isEmpty()) return messages
        val system = if (messages.isNotEmpty() && messages[0].role == "system") messages[0].content else null
        val rest = if (system != null) messages.drop(1) else messages
        return listOf(ChatMessage("system", systemPrompt(tools, system))) + rest
    }

    /** Assistant tool calls as text in the Python-list form (what the template renders). */
    fun renderMessages(messages: List<ChatMessage>): List<ChatMessage> = messages.map {
        if (it.role == "assistant" && it.toolCalls.isNotEmpty()) ChatMessage("assistant", it.content + formatCalls(it.toolCalls))
        else it
    }

    fun formatCalls(calls: List<ToolCall>): String = calls.joinToString(", ", "[", "]") { call ->
        call.name + call.arguments.entries.joinToString(", ", "(", ")") { (k, v) -> "$k=${literal(v)}" }
    }

    private fun literal(value: Any?): String = when (value) {
        true -> "True"
        false -> "False"
        null -> "None"
        is String -> JsonWriter.write(value)
        is List<*> -> value.joinToString(", ", "[", "]") { literal(it) }
        is Map<*, *> -> value.entries.joinToString(", ", "{", "}") { (k, v) -> JsonWriter.write(k.toString()) + ": " + literal(v) }
        else -> JsonWriter.write(value)
    }

    /** Calls, or text (with [ParsedReply.error] when it looked like a call). Never throws. */
    fun parseReply(reply: String, tools: List<Tool>): ParsedReply {
        val text = if (reply.startsWith(PYTHON_TAG)) reply.substring(PYTHON_TAG.length) else reply
        val body = text.trim()
        val calls: List<ToolCall>
        try {
            calls = when {
                Regex("^\\[\\s*[A-Za-z_][A-Za-z0-9_.\\-]*\\s*\\(").containsMatchIn(body) -> PythonCalls(body).calls()
                Regex("^\\{\\s*\"(name|type)\"\\s*:").containsMatchIn(body) -> jsonCall(body)
                else -> return ParsedReply(text)
            }
            for (call in calls) check(call, tools)
        } catch (e: InvalidCall) {
            return ParsedReply(text, error = e.message)
        }
        return ParsedReply(text, calls)
    }

    private class InvalidCall(message: String) : Exception(message)

    private fun check(call: ToolCall, tools: List<Tool>) {
        val tool = tools.firstOrNull { it.name == call.name }
            ?: throw InvalidCall("the model called '${call.name}', which is not one of the tools offered")
        tool.required.firstOrNull { it !in call.arguments }?.let { throw InvalidCall("${call.name}: missing required argument '$it'") }
        if (tool.properties.isNotEmpty()) {
            call.arguments.keys.firstOrNull { it !in tool.properties }?.let { throw InvalidCall("${call.name}: unknown argument '$it'") }
        }
    }

    private fun jsonCall(body: String): List<ToolCall> {
        val data = try { Json.parse(body) } catch (e: JsonException) { throw InvalidCall("the call is not valid JSON (or stops before its end)") }
        val m = data as? Map<*, *>
        val name = m?.get("name") as? String ?: throw InvalidCall("a JSON call needs a \"name\"")
        val args = if (m.containsKey("parameters")) m["parameters"] else m["arguments"] ?: emptyMap<String, Any?>()
        if (args !is Map<*, *>) throw InvalidCall("$name: the arguments are not a JSON object")
        return listOf(ToolCall(name, args.entries.associate { (k, v) -> k as String to v }))
    }

    /** `[name(key=literal, ...), ...]` with Python or JSON literals; nothing after the closing bracket. */
    private class PythonCalls(val s: String) {
        var i = 0

        fun fail(what: String) = if (i >= s.length) InvalidCall("the reply stops inside a tool call")
        else InvalidCall("not a valid tool call: $what at character $i")

        fun space() { while (i < s.length && s[i] in " \t\r\n") i++ }

        fun expect(ch: Char) {
            space()
            if (i >= s.length || s[i] != ch) throw fail("expected '$ch'")
            i++
        }

        fun peek(): Char? { space(); return if (i < s.length) s[i] else null }

        fun name(): String {
            space()
            val m = NAME.find(s, i)
            if (m == null || m.range.first != i) throw fail("expected a name")
            i = m.range.last + 1
            return m.value
        }

        fun calls(): List<ToolCall> {
            val out = ArrayList<ToolCall>()
            expect('[')
            while (true) {
                val name = name()
                expect('(')
                val args = LinkedHashMap<String, Any?>()
                if (peek() != ')') {
                    while (true) {
                        val key = name()
                        expect('=')
                        if (args.containsKey(key)) throw fail("argument '$key' given twice")
                        args[key] = value(key)
                        if (peek() == ',') { i++; continue }
                        break
                    }
                }
                expect(')')
                out.add(ToolCall(name, args))
                if (peek() == ',') { i++; continue }
                break
            }
            expect(']')
            space()
            if (i != s.length) throw InvalidCall("text after the tool calls at character $i")
            return out
        }

        fun value(key: String): Any? {
            val ch = peek()
            if (ch == '\'' || ch == '"') return string()
            if (ch == '[') {
                i++
                val items = ArrayList<Any?>()
                if (peek() == ']') { i++; return items }
                while (true) {
                    items.add(value(key))
                    if (peek() == ',') {
                        i++
                        if (peek() == ']') { i++; return items }
                        continue
                    }
                    expect(']')
                    return items
                }
            }
            if (ch == '{') {
                i++
                val obj = LinkedHashMap<String, Any?>()
                if (peek() == '}') { i++; return obj }
                while (true) {
                    val q = peek()
                    if (q != '\'' && q != '"') throw fail("expected a string key")
                    val k = string()
                    expect(':')
                    obj[k] = value(key)
                    if (peek() == ',') { i++; continue }
                    expect('}')
                    return obj
                }
            }
            val number = Regex("-?(0|[1-9][0-9]*)(\\.[0-9]+)?([eE][+-]?[0-9]+)?").find(s, i)
            if (number != null && number.range.first == i && number.value.isNotEmpty()) {
                i = number.range.last + 1
                val t = number.value
                return if (t.any { it == '.' || it == 'e' || it == 'E' }) t.toDouble() else (t.toLongOrNull() ?: t.toDouble())
            }
            val words = listOf("True" to true, "False" to false, "None" to null, "true" to true, "false" to false, "null" to null)
            for ((word, result) in words) {
                val end = i + word.length
                if (s.startsWith(word, i) && !(end < s.length && (s[end].isLetterOrDigit() || s[end] == '_'))) {
                    i = end
                    return result
                }
            }
            if (i >= s.length) throw fail("")
            throw InvalidCall("argument '$key' is not a JSON or Python literal")
        }

        fun string(): String {
            val quote = s[i++]
            val out = StringBuilder()
            while (true) {
                if (i >= s.length) throw fail("")
                val c = s[i++]
                if (c == quote) return out.toString()
                if (c == '\n') throw InvalidCall("a string argument runs past the end of its line")
                if (c != '\\') { out.append(c); continue }
                if (i >= s.length) throw fail("")
                when (val e = s[i++]) {
                    'n' -> out.append('\n')
                    't' -> out.append('\t')
                    'r' -> out.append('\r')
                    'b' -> out.append('\b')
                    'f' -> out.append('\u000c')
                    '\\', '\'', '"', '/' -> out.append(e)
                    'u' -> {
                        if (i + 4 > s.length) { i = s.length; throw fail("") }
                        val hex = s.substring(i, i + 4)
                        if (!hex.all { it in '0'..'9' || it in 'a'..'f' || it in 'A'..'F' }) throw InvalidCall("a bad \\u escape in a string argument")
                        out.append(hex.toInt(16).toChar())
                        i += 4
                    }
                    else -> throw InvalidCall("an unknown escape \\$e in a string argument")
                }
            }
        }
    }
}

/**
 * JSON written as Python's json.dumps(value, ensure_ascii=False) writes it: compact with ", " and ": ", or with
 * [indent] spaces ("," and ": "); keys in their order; only '"', '\\' and control characters escaped; a Double
 * as Python's repr (exponent below 1e-4 and from 1e16 on).
 */
object JsonWriter {
    fun write(value: Any?, indent: Int? = null): String = StringBuilder().also { write(it, value, indent, 0) }.toString()

    private fun write(out: StringBuilder, value: Any?, indent: Int?, level: Int) {
        when (value) {
            null -> out.append("null")
            true -> out.append("true")
            false -> out.append("false")
            is String -> string(out, value)
            is Double -> out.append(double(value))
            is Float -> out.append(double(value.toDouble()))
            is Number -> out.append(value.toLong().toString())
            is Map<*, *> -> container(out, value.entries.toList(), '{', '}', indent, level) { e, l ->
                string(out, e.key.toString()); out.append(": "); write(out, e.value, indent, l)
            }
            is List<*> -> container(out, value, '[', ']', indent, level) { v, l -> write(out, v, indent, l) }
            else -> throw IllegalArgumentException("not a JSON value: $value")
        }
    }

    private fun <T> container(out: StringBuilder, items: List<T>, open: Char, close: Char, indent: Int?, level: Int,
                              item: (T, Int) -> Unit) {
        out.append(open)
        if (items.isEmpty()) { out.append(close); return }
        for ((i, v) in items.withIndex()) {
            if (indent != null) out.append(if (i == 0) "\n" else ",\n").append(" ".repeat(indent * (level + 1)))
            else if (i > 0) out.append(", ")
            item(v, level + 1)
        }
        if (indent != null) out.append("\n").append(" ".repeat(indent * level))
        out.append(close)
    }

    private fun string(out: StringBuilder, s: String) {
        out.append('"')
        for (c in s) {
            when (c) {
                '"' -> out.append("\\\"")
                '\\' -> out.append("\\\\")
                '\n' -> out.append("\\n")
                '\r' -> out.append("\\r")
                '\t' -> out.append("\\t")
                '\b' -> out.append("\\b")
                '\u000c' -> out.append("\\f")
                else -> if (c < ' ') out.append(String.format("\\u%04x", c.toInt())) else out.append(c)
            }
        }
        out.append('"')
    }

    fun double(d: Double): String {
        if (d.isNaN()) return "NaN"
        if (d.isInfinite()) return if (d > 0) "Infinity" else "-Infinity"
        if (d == 0.0) return if (1.0 / d < 0) "-0.0" else "0.0"
        val bd = BigDecimal(d.toString()).stripTrailingZeros()
        val digits = bd.unscaledValue().abs().toString()
        val exp = digits.length - 1 - bd.scale()
        val sign = if (d < 0) "-" else ""
        if (exp >= -4 && exp < 16) {
            val plain = bd.abs().toPlainString()
            return sign + if (plain.contains('.')) plain else "$plain.0"
        }
        val mantissa = if (digits.length == 1) digits else digits[0] + "." + digits.substring(1)
        return sign + mantissa + "e" + (if (exp < 0) "-" else "+") + String.format("%02d", Math.abs(exp))
    }
}
