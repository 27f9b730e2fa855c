/// One message of a conversation; an assistant message may carry the tool calls it made instead of text.
public struct ChatMessage: Equatable {
    public let role: String
    public let content: String
    public let toolCalls: [ToolCall]

    public init(role: String, content: String, toolCalls: [ToolCall] = []) {
        self.role = role
        self.content = content
        self.toolCalls = toolCalls
    }

    public static let roles = ["system", "user", "assistant", "tool"]

    /// A conversation read from JSON, refused as check_messages in runtime_harness/chat.py refuses it.
    public static func list(from json: JSONValue) throws -> [ChatMessage] {
        guard case .array(let items) = json else { throw ChatTemplateError.message("the conversation must be a JSON list of messages") }
        var out: [ChatMessage] = []
        for (i, item) in items.enumerated() {
            let number = i + 1
            guard case .object = item else { throw ChatTemplateError.message("message \(number) is not an object") }
            guard case .string(let role)? = item["role"], roles.contains(role) else {
                throw ChatTemplateError.message("message \(number) has an unknown role")
            }
            let content = item["content"]
            if content == nil || content == JSONValue.null, role == "assistant", case .array(let calls)? = item["tool_calls"], !calls.isEmpty {
                out.append(ChatMessage(role: role, content: "", toolCalls: try calls.map(ToolCall.init(json:))))
            } else if role == "tool", let content, content != JSONValue.null, !content.isString {
                out.append(ChatMessage(role: role, content: JSONWriter.write(content)))
            } else if case .string(let text)? = content {
                if role == "system" && number != 1 { throw ChatTemplateError.message("message \(number) is a system message after the first") }
                out.append(ChatMessage(role: role, content: text))
            } else {
                throw ChatTemplateError.message("message \(number) (\(role)) has no text content")
            }
        }
        return out
    }
}

public struct ContextOverflowError: Error, Equatable {
    public let message: String
}

/// The context policy (bundles without runtime.attention_sink), as fit_history in runtime_harness/chat.py and
/// ContextPolicy.kt (tests/vectors/chat_context.json): drop the oldest messages until the rendered conversation
/// fits `budget` tokens, keeping a leading system message; the kept rest starts at a user message (or is the last
/// message alone). Returns how many messages after the system one are dropped; the app then resets the runner and
/// prefills the kept conversation.
public enum ContextPolicy {
    public static func fit(_ template: ChatTemplate, _ messages: [ChatMessage], count: (String) -> Int, budget: Int) throws -> Int {
        let system = messages.first?.role == "system" ? 1 : 0
        let rest = Array(messages[system...])
        for drop in rest.indices {
            if drop > 0 && rest[drop].role != "user" && drop != rest.count - 1 { continue }
            let kept = Array(messages[..<system]) + rest[drop...]
            if count(try template.render(ToolCalling.renderMessages(kept))) <= budget { return drop }
        }
        throw ContextOverflowError(message: "the last message does not fit the context (\(budget) tokens for the prompt)")
    }
}

/// A conversation on one runner that continues from its position (ExecuTorch's text runner until reset), as
/// ChatSession.kt and Conversation in runtime_harness/chat.py: `nextPrompt` gives the text to prefill for the next
/// reply (only what the runner does not hold yet) and whether to reset the runner first; `replied` records the reply.
public final class ChatSession {
    public let template: ChatTemplate
    public private(set) var messages: [ChatMessage] = []
    public private(set) var dropped = 0
    private let system: String?
    private var first = 0
    private var cachedText = ""
    private var stale = false

    public struct Prompt: Equatable {
        public let text: String
        public let resetFirst: Bool
        public let dropped: Int
    }

    public init(template: ChatTemplate, system: String? = nil) throws {
        self.template = try template.conversation()
        self.system = system
        reset()
    }

    public func reset() {
        messages = system.map { [ChatMessage(role: "system", content: $0)] } ?? []
        first = 0; cachedText = ""; stale = false; dropped = 0
    }

    public var window: [ChatMessage] {
        let head = messages.first?.role == "system" ? 1 : 0
        return Array(messages[..<head]) + messages[max(first, head)...]
    }

    public func add(role: String, content: String) throws {
        guard role == "user" || role == "tool" else { throw ChatTemplateError.message("cannot add a '\(role)' message") }
        messages.append(ChatMessage(role: role, content: content))
    }

    /// `slidingWindow`: the bundle has an attention sink (`Manifest.Runtime.attentionSink`): the runner recycles its
    /// ring, so the held tokens count as none and the conversation goes on past the context without dropping anything;
    /// only a rebuild that does not fit on its own falls back to the policy (as ChatSession.kt and chat.py).
    public func nextPrompt(cachedTokens: Int, context: Int, count: (String) -> Int, reserve: Int = 64,
                           slidingWindow: Bool = false) throws -> Prompt {
        var rendered = try template.render(ToolCalling.renderMessages(window))
        var reset = stale || cachedText.isEmpty || !rendered.unicodeScalars.starts(with: cachedText.unicodeScalars)
        var delta = reset ? rendered : String(String.UnicodeScalarView(rendered.unicodeScalars.dropFirst(cachedText.unicodeScalars.count)))
        let room = max(1, min(reserve, context / 4))
        if (reset || slidingWindow ? 0 : cachedTokens) + count(delta) + room > context {
            let drop = try ContextPolicy.fit(template, window, count: count, budget: context - room)
            if drop > 0 {
                first = max(first, messages.first?.role == "system" ? 1 : 0) + drop
                dropped += drop
            }
            rendered = try template.render(ToolCalling.renderMessages(window))
            reset = true
            delta = rendered
        }
        cachedText = rendered
        return Prompt(text: delta, resetFirst: reset, dropped: dropped)
    }

    /// The reply as the runner streamed it (stop token left out); `stopped`: it ended on a stop token.
    public func replied(_ text: String, stopped: Bool) {
        messages.append(ChatMessage(role: "assistant", content: text))
        cachedText += text
        stale = !stopped
    }
}
