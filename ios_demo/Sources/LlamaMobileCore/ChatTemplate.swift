/// A manifest's prompt_template: the same single-turn format as chat_prompt in llama_mobile/core/tokenizer.py.
public struct ChatTemplate: Codable, Equatable {
    public let name: String
    public let prefix: String
    public let user: String  // "{content}" is replaced by the message
    public let assistantStart: String

    enum CodingKeys: String, CodingKey {
        case name, prefix, user
        case assistantStart = "assistant_start"
    }

    public init(name: String, prefix: String, user: String, assistantStart: String) {
        self.name = name
        self.prefix = prefix
        self.user = user
        self.assistantStart = assistantStart
    }

    /// One pass: "{content}" inside the message itself is not substituted again. The message is neutralized
    /// (ControlTokens): "<|im_end|>" or "<|eot_id|>" written in it never becomes a control token.
    public func format(_ message: String, extra: [String] = []) -> String {
        prefix + user.replacingOccurrences(of: "{content}", with: ControlTokens.neutralize(message, extra: extra))
            + assistantStart
    }
}
