package dev.llamamobile.core

/** A manifest's prompt_template: the same single-turn format as chat_prompt in llama_mobile/core/tokenizer.py. */
data class ChatTemplate(val name: String, val prefix: String, val user: String, val assistantStart: String) {
    // One pass: "{content}" inside the message itself is not substituted again. The message is neutralized
    // (ControlTokens): "<|im_end|>" or "<|eot_id|>" written in it never becomes a control token.
    fun format(message: String, extra: List<String> = emptyList()): String =
        prefix + user.replace("{content}", ControlTokens.neutralize(message, extra)) + assistantStart

    companion object {
        fun fromJson(json: Map<*, *>): ChatTemplate {
            val template = ChatTemplate(json.str("name"), json.str("prefix"), json.str("user"), json.str("assistant_start"))
            if (!template.user.contains("{content}")) throw JsonException("prompt_template.user lacks {content}")
            return template
        }
    }
}
