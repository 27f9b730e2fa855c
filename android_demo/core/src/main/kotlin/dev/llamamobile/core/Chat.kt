package dev.llamamobile.core

/** One message of a conversation; an assistant message may carry the tool calls it made instead of text. */
data class ChatMessage(val role: String, val content: String, val toolCalls: List<ToolCall> = emptyList()) {
    companion object {
        val ROLES = listOf("system", "user", "assistant", "tool")

        /**
         * A conversation read from JSON, refused as check_messages in runtime_harness/chat.py refuses it: a list of
         * {"role": one of ROLES, "content": string}; an assistant message may give "tool_calls" instead of content;
         * a system message only first. A tool result that is not a string is kept as compact JSON.
         */
        fun listFromJson(json: Any?): List<ChatMessage> {
            val list = json as? List<*> ?: throw ChatTemplateException("the conversation must be a JSON list of messages")
            return list.mapIndexed { i, item ->
                val number = i + 1
                val m = item as? Map<*, *> ?: throw ChatTemplateException("message $number is not an object")
                val role = m["role"] as? String
                if (role == null || role !in ROLES) throw ChatTemplateException("message $number has role ${m["role"]}")
                val content = m["content"]
                val calls = m["tool_calls"]
                when {
                    content == null && role == "assistant" && calls is List<*> && calls.isNotEmpty() ->
                        ChatMessage(role, "", calls.map { ToolCall.fromJson(it) })
                    role == "tool" && content != null && content !is String -> ChatMessage(role, JsonWriter.write(content))
                    content !is String -> throw ChatTemplateException("message $number ($role) has no text content")
                    role == "system" && number != 1 -> throw ChatTemplateException("message $number is a system message after the first")
                    else -> ChatMessage(role, content)
                }
            }
        }
    }
}

class ContextOverflowException(message: String) : Exception(message)

/**
 * The context policy (bundles without runtime.attention_sink), as fit_history in runtime_harness/chat.py
 * (tests/vectors/chat_context.json): drop the oldest messages until the rendered conversation (with the
 * generation prompt) is at most [budget] tokens. A leading system message is always kept; the kept rest starts
 * at a user message, or is the last message alone. Returns how many messages after the system one are dropped;
 * the app then re-prefills the kept conversation from an empty cache (reset the runner, generate from it).
 */
object ContextPolicy {
    fun fit(template: ChatTemplate, messages: List<ChatMessage>, count: (String) -> Int, budget: Int): Int {
        val system = if (messages.isNotEmpty() && messages[0].role == "system") 1 else 0
        val rest = messages.subList(system, messages.size)
        for (drop in rest.indices) {
            if (drop > 0 && rest[drop].role != "user" && drop != rest.size - 1) continue
            val kept = messages.subList(0, system) + rest.subList(drop, rest.size)
            if (count(template.render(ToolCalling.renderMessages(kept))) <= budget) return drop
        }
        throw ContextOverflowException("the last message does not fit the context ($budget tokens for the prompt)")
    }
}

/**
 * A conversation on one runner that continues from its position (ExecuTorch's LlmModule / TextLLMRunner until
 * reset()), as Conversation in runtime_harness/chat.py: [nextPrompt] gives the text to prefill for the next reply
 * (only what the runner does not hold yet) and whether to reset the runner first; [replied] records the reply.
 */
class ChatSession(template: ChatTemplate, private val system: String? = null) {
    val template: ChatTemplate = template.conversation()
    val messages = ArrayList<ChatMessage>()
    private var first = 0  // messages before this one (after a system message) were dropped by the context policy
    private var cachedText = ""  // the rendered conversation's beginning that the runner holds
    private var stale = false
    var dropped = 0
        private set

    data class Prompt(val text: String, val resetFirst: Boolean, val dropped: Int)

    init { reset() }

    fun reset() {
        messages.clear()
        if (system != null) messages.add(ChatMessage("system", system))
        first = 0; cachedText = ""; stale = false; dropped = 0
    }

    /** The messages the model sees: a leading system message and the messages from the policy's cut on. */
    val window: List<ChatMessage>
        get() {
            val head = if (messages.isNotEmpty() && messages[0].role == "system") 1 else 0
            return messages.subList(0, head) + messages.subList(maxOf(first, head), messages.size)
        }

    fun add(role: String, content: String) {
        if (role != "user" && role != "tool") throw ChatTemplateException("cannot add a '$role' message")
        messages.add(ChatMessage(role, content))
    }

    /**
     * [cachedTokens]: tokens the runner holds now; [count] counts a text's tokens; [reserve]: room for the reply.
     * [slidingWindow]: the bundle has an attention sink (Manifest.attentionSink): its cache is a ring that the runner
     * recycles, so the held tokens count as none and the conversation goes on past the context without dropping
     * anything; only a rebuild that does not fit on its own falls back to the policy (as Conversation in Python).
     * Throws ContextOverflowException when the last message does not fit on its own.
     */
    fun nextPrompt(cachedTokens: Int, context: Int, count: (String) -> Int, reserve: Int = 64,
                   slidingWindow: Boolean = false): Prompt {
        var rendered = template.render(ToolCalling.renderMessages(window))
        var reset = stale || cachedText.isEmpty() || !rendered.startsWith(cachedText)
        var delta = if (reset) rendered else rendered.substring(cachedText.length)
        val room = maxOf(1, minOf(reserve, context / 4))
        if ((if (reset || slidingWindow) 0 else cachedTokens) + count(delta) + room > context) {
            val drop = ContextPolicy.fit(template, window, count, context - room)
            if (drop > 0) {
                first = maxOf(first, if (messages.isNotEmpty() && messages[0].role == "system") 1 else 0) + drop
                dropped += drop
            }
            rendered = template.render(ToolCalling.renderMessages(window))
            reset = true
            delta = rendered
        }
        cachedText = rendered
        return Prompt(delta, reset, dropped)
    }

    /** The reply as the runner streamed it (stop token left out); [stopped]: it ended on a stop token. */
    fun replied(text: String, stopped: Boolean) {
        messages.add(ChatMessage("assistant", text))
        cachedText += text
        stale = !stopped  // a reply cut by the token limit leaves its last token out of the cache
    }
}
