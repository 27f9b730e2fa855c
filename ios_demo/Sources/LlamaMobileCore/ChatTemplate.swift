/// A manifest's prompt_template: the single-turn format of chat_prompt and the multi-turn one of render_chat in
/// llama_mobile/core/tokenizer.py (tests/vectors/chat_prompts.json, chat_turns.json); ChatTemplate.kt is the same.
///
/// Multi-turn (optional fields, absent from bundles written before them): bos, the default system turn when the
/// conversation has no system message, one system/user/assistant/tool part per message ("{content}" replaced by
/// the neutralized content), then assistantStart. `conversation()` maps an old bundle's "chatml"/"llama3"
/// template to the preset format of that name.
public struct ChatTemplate: Codable, Equatable {
    public let name: String
    public let prefix: String
    public let user: String  // "{content}" is replaced by the message
    public let assistantStart: String
    public let bos: String?
    public let system: String?
    public let assistant: String?
    public let tool: String?
    public let defaultSystem: String?

    enum CodingKeys: String, CodingKey {
        case name, prefix, user, bos, system, assistant, tool
        case assistantStart = "assistant_start"
        case defaultSystem = "default_system"
    }

    public init(name: String, prefix: String, user: String, assistantStart: String, bos: String? = nil,
                system: String? = nil, assistant: String? = nil, tool: String? = nil, defaultSystem: String? = nil) {
        self.name = name
        self.prefix = prefix
        self.user = user
        self.assistantStart = assistantStart
        self.bos = bos
        self.system = system
        self.assistant = assistant
        self.tool = tool
        self.defaultSystem = defaultSystem
    }

    /// One pass: "{content}" inside the message itself is not substituted again. The message is neutralized
    /// (ControlTokens): "<|im_end|>" or "<|eot_id|>" written in it never becomes a control token.
    public func format(_ message: String, extra: [String] = []) -> String {
        prefix + user.replacingOccurrences(of: "{content}", with: ControlTokens.neutralize(message, extra: extra))
            + assistantStart
    }

    public var isMultiTurn: Bool { bos != nil && system != nil && assistant != nil && tool != nil }

    /// What closes an assistant turn: the text after "{content}" in `assistant` ("<|im_end|>\n", "<|eot_id|>").
    public var assistantEnd: String {
        guard let assistant, let range = assistant.range(of: "{content}") else { return "" }
        return String(assistant[range.upperBound...])
    }

    public func conversation() throws -> ChatTemplate {
        if isMultiTurn { return self }
        for known in [ChatTemplate.chatMLSmol, ChatTemplate.llama3]
        where name == known.name && prefix == known.prefix && user == known.user && assistantStart == known.assistantStart {
            return known
        }
        throw ChatTemplateError.message("the prompt template '\(name)' has no multi-turn parts (system, assistant, tool)")
    }

    /// A conversation rendered as render_chat does.
    public func render(_ messages: [ChatMessage], generationPrompt: Bool = true, extra: [String] = []) throws -> String {
        let t = try conversation()
        func fill(_ part: String, _ content: String) -> String {
            part.replacingOccurrences(of: "{content}", with: ControlTokens.neutralize(content, extra: extra))
        }
        var out = t.bos ?? ""
        if let defaultSystem = t.defaultSystem, messages.first?.role != "system" {
            out += fill(t.system!, defaultSystem)
        }
        for (i, m) in messages.enumerated() {
            let part: String?
            switch m.role {
            case "system": part = t.system
            case "user": part = t.user
            case "assistant": part = t.assistant
            case "tool": part = t.tool
            default: throw ChatTemplateError.message("message \(i + 1) has role '\(m.role)'")
            }
            out += fill(part!, m.content)
        }
        if generationPrompt { out += t.assistantStart }
        return out
    }

    public static let smolSystem = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"

    /// SmolLM2's ChatML, as CHATML_SMOL in llama_mobile/core/presets.py.
    public static let chatMLSmol = ChatTemplate(
        name: "chatml",
        prefix: "<|im_start|>system\n\(smolSystem)<|im_end|>\n",
        user: "<|im_start|>user\n{content}<|im_end|>\n",
        assistantStart: "<|im_start|>assistant\n",
        bos: "",
        system: "<|im_start|>system\n{content}<|im_end|>\n",
        assistant: "<|im_start|>assistant\n{content}<|im_end|>\n",
        tool: "<|im_start|>tool\n{content}<|im_end|>\n",
        defaultSystem: smolSystem)

    /// Meta's Llama 3.1/3.2 format, as LLAMA3_CHAT (a tool result is the ipython role).
    public static let llama3 = ChatTemplate(
        name: "llama3",
        prefix: "<|begin_of_text|>",
        user: "<|start_header_id|>user<|end_header_id|>\n\n{content}<|eot_id|>",
        assistantStart: "<|start_header_id|>assistant<|end_header_id|>\n\n",
        bos: "<|begin_of_text|>",
        system: "<|start_header_id|>system<|end_header_id|>\n\n{content}<|eot_id|>",
        assistant: "<|start_header_id|>assistant<|end_header_id|>\n\n{content}<|eot_id|>",
        tool: "<|start_header_id|>ipython<|end_header_id|>\n\n{content}<|eot_id|>")
}

public enum ChatTemplateError: Error, Equatable {
    case message(String)
}
