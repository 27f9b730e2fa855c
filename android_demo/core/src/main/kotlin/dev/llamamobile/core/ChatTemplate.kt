package dev.llamamobile.core

/**
 * A manifest's prompt_template: the single-turn format of chat_prompt and the multi-turn one of render_chat in
 * llama_mobile/core/tokenizer.py (tests/vectors/chat_prompts.json, chat_turns.json).
 *
 * Multi-turn (optional fields, absent from bundles written before them): bos, the default system turn when the
 * conversation has no system message, one system/user/assistant/tool part per message ("{content}" replaced by
 * the neutralized content), then assistantStart. [conversation] maps an old bundle's "chatml"/"llama3" template
 * to the preset format of that name.
 */
data class ChatTemplate(
    val name: String,
    val prefix: String,
    val user: String,
    val assistantStart: String,
    val bos: String? = null,
    val system: String? = null,
    val assistant: String? = null,
    val tool: String? = null,
    val defaultSystem: String? = null
) {
    // One pass: "{content}" inside the message itself is not substituted again. The message is neutralized
    // (ControlTokens): "<|im_end|>" or "<|eot_id|>" written in it never becomes a control token.
    fun format(message: String, extra: List<String> = emptyList()): String =
        prefix + user.replace("{content}", ControlTokens.neutralize(message, extra)) + assistantStart

    val isMultiTurn: Boolean get() = bos != null && system != null && assistant != null && tool != null

    /** What closes an assistant turn: the text after "{content}" in [assistant] ("<|im_end|>\n", "<|eot_id|>"). */
    val assistantEnd: String get() = (assistant ?: "{content}").substringAfter("{content}")

    /** This template with its multi-turn parts; a ChatTemplateException when it has none and is no known format. */
    fun conversation(): ChatTemplate {
        if (isMultiTurn) return this
        for (known in listOf(CHATML_SMOL, LLAMA3)) {
            if (name == known.name && prefix == known.prefix && user == known.user && assistantStart == known.assistantStart) {
                return known
            }
        }
        throw ChatTemplateException("the prompt template '$name' has no multi-turn parts (system, assistant, tool)")
    }

    /** A conversation rendered as render_chat does; an unknown role is a ChatTemplateException. */
    fun render(messages: List<ChatMessage>, generationPrompt: Boolean = true, extra: List<String> = emptyList()): String {
        val t = conversation()
        val out = StringBuilder(t.bos ?: "")
        if (t.defaultSystem != null && (messages.isEmpty() || messages[0].role != "system")) {
            out.append(t.system!!.replace("{content}", ControlTokens.neutralize(t.defaultSystem, extra)))
        }
        for ((i, m) in messages.withIndex()) {
            val part = when (m.role) {
                "system" -> t.system
                "user" -> t.user
                "assistant" -> t.assistant
                "tool" -> t.tool
                else -> throw ChatTemplateException("message ${i + 1} has role '${m.role}'")
            }!!
            out.append(part.replace("{content}", ControlTokens.neutralize(m.content, extra)))
        }
        if (generationPrompt) out.append(t.assistantStart)
        return out.toString()
    }

    companion object {
        const val SMOL_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"

        /** SmolLM2's ChatML, as CHATML_SMOL in llama_mobile/core/presets.py. */
        val CHATML_SMOL = ChatTemplate(
            name = "chatml",
            prefix = "<|im_start|>system\n$SMOL_SYSTEM<|im_end|>\n",
            user = "<|im_start|>user\n{content}<|im_end|>\n",
            assistantStart = "<|im_start|>assistant\n",
            bos = "",
            system = "<|im_start|>system\n{content}<|im_end|>\n",
            assistant = "<|im_start|>assistant\n{content}<|im_end|>\n",
            tool = "<|im_start|>tool\n{content}<|im_end|>\n",
            defaultSystem = SMOL_SYSTEM
        )

        /** Meta's Llama 3.1/3.2 format, as LLAMA3_CHAT (a tool result is the ipython role). */
        val LLAMA3 = ChatTemplate(
            name = "llama3",
            prefix = "<|begin_of_text|>",
            user = "<|start_header_id|>user<|end_header_id|>\n\n{content}<|eot_id|>",
            assistantStart = "<|start_header_id|>assistant<|end_header_id|>\n\n",
            bos = "<|begin_of_text|>",
            system = "<|start_header_id|>system<|end_header_id|>\n\n{content}<|eot_id|>",
            assistant = "<|start_header_id|>assistant<|end_header_id|>\n\n{content}<|eot_id|>",
            tool = "<|start_header_id|>ipython<|end_header_id|>\n\n{content}<|eot_id|>"
        )

        fun fromJson(json: Map<*, *>): ChatTemplate {
            fun opt(key: String): String? = when (val v = json[key]) {
                null -> null
                is String -> v
                else -> throw JsonException("prompt_template.$key must be a string")
            }
            val template = ChatTemplate(
                json.str("name"), json.str("prefix"), json.str("user"), json.str("assistant_start"),
                opt("bos"), opt("system"), opt("assistant"), opt("tool"), opt("default_system")
            )
            if (!template.user.contains("{content}")) throw JsonException("prompt_template.user lacks {content}")
            for ((key, part) in listOf("system" to template.system, "assistant" to template.assistant, "tool" to template.tool)) {
                if (part != null && !part.contains("{content}")) throw JsonException("prompt_template.$key lacks {content}")
            }
            return template
        }
    }
}

class ChatTemplateException(message: String) : Exception(message)
