import Foundation

/// Llama Guard 3 1B prompt formatting and strict reply parsing, the same as runtime_harness/guard_prompt.py
/// (its docstring explains the choices: codes kept on exclusion, messages stripped, Llama 3 chat framing,
/// messages neutralized by ControlTokens so that they never write a control token).
/// tests/vectors/guard_*.json hold this file, the Kotlin core and the Python module to one output.
public struct GuardUsageError: Error, CustomStringConvertible { public let description: String }
public struct GuardReplyError: Error, CustomStringConvertible { public let description: String }

public struct GuardCategory: Codable, Equatable {
    public let code: String
    public let name: String  // without the final period, which the prompt adds
    public let description: String

    public init(code: String, name: String, description: String = "") {
        self.code = code
        self.name = name
        self.description = description
    }

    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        code = try c.decode(String.self, forKey: .code)
        name = try c.decode(String.self, forKey: .name)
        description = try c.decodeIfPresent(String.self, forKey: .description) ?? ""
    }
}

public struct Turn: Codable, Equatable {
    public let role: String  // "user" or "assistant"
    public let content: String
    public init(role: String, content: String) { self.role = role; self.content = content }
}

public struct GuardVerdict: Equatable {
    public let safe: Bool
    public let categories: [String]
    public let names: [String]
}

/// The template as guard_template_for_manifest() writes it; `standard` is Meta's text with the 13 1B categories.
public struct GuardTemplate: Codable, Equatable {
    public let name: String
    public let version: Int
    public let pieces: [String: String]
    public let roles: [String: String]
    public let strip: String
    public let categories: [GuardCategory]

    /// Exactly the characters of Python's str.isspace(), i.e. what str.strip() removes.
    public static let whitespace = "\t\n\u{0B}\u{0C}\r\u{1C}\u{1D}\u{1E}\u{1F} \u{85}\u{A0}\u{1680}\u{2000}\u{2001}\u{2002}"
        + "\u{2003}\u{2004}\u{2005}\u{2006}\u{2007}\u{2008}\u{2009}\u{200A}\u{2028}\u{2029}\u{202F}\u{205F}\u{3000}"

    public static let llamaGuard3_1BCategories: [GuardCategory] = [
        "Violent Crimes", "Non-Violent Crimes", "Sex Crimes", "Child Exploitation", "Defamation",
        "Specialized Advice", "Privacy", "Intellectual Property", "Indiscriminate Weapons", "Hate", "Self-Harm",
        "Sexual Content", "Elections",
    ].enumerated().map { GuardCategory(code: "S\($0.offset + 1)", name: $0.element) }

    /// Llama Guard 3 8B only; pass it as a custom category to use it with the 1B model anyway.
    public static let codeInterpreterAbuse = GuardCategory(code: "S14", name: "Code Interpreter Abuse")

    public static let standard = GuardTemplate(
        name: "llama-guard-3-1b",
        version: 1,
        pieces: [
            "begin": "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n",
            "task": "Task: Check if there is unsafe content in '{role}' messages in conversations according our "
                + "safety policy with the below categories.\n\n",
            "categories_begin": "<BEGIN UNSAFE CONTENT CATEGORIES>\n",
            "category": "{code}: {name}.\n",
            "category_description": "{description}\n",
            "categories_end": "<END UNSAFE CONTENT CATEGORIES>\n\n",
            "conversation_begin": "<BEGIN CONVERSATION>\n\n",
            "turn": "{role}: {content}\n\n",
            "conversation_end": "<END CONVERSATION>\n\n",
            "instructions": "Provide your safety assessment for ONLY THE LAST {role} message in the above conversation:\n"
                + " - First line must read 'safe' or 'unsafe'.\n"
                + " - If unsafe, a second line must include a comma-separated list of violated categories.",
            "end": "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n",
        ],
        roles: ["user": "User", "assistant": "Agent"],
        strip: whitespace,
        categories: llamaGuard3_1BCategories
    )
}

public enum GuardPrompt {
    static let eot = "<|eot_id|>"

    /// The categories a prompt lists: `categories` (default: the 1B list) minus the `excluded` codes.
    public static func activeCategories(_ categories: [GuardCategory]? = nil, excluded: [String] = []) throws -> [GuardCategory] {
        let chosen = categories ?? GuardTemplate.llamaGuard3_1BCategories
        var problems: [String] = []
        let codes = chosen.map(\.code)
        for c in chosen {
            let valid = !c.code.isEmpty && c.code.unicodeScalars.allSatisfy {
                ("A"..."Z").contains($0) || ("a"..."z").contains($0) || ("0"..."9").contains($0) || $0 == "_" || $0 == "-"
            }
            if !valid { problems.append("category code '\(c.code)' must be letters, digits, '_' or '-'") }
            if strip(c.name, GuardTemplate.whitespace).isEmpty || c.name.unicodeScalars.contains("\n") {
                problems.append("category \(c.code) needs a one-line name")
            }
        }
        if Set(codes).count != codes.count { problems.append("category codes repeat: \(codes)") }
        for code in excluded where !codes.contains(code) {
            let hint = code == GuardTemplate.codeInterpreterAbuse.code && chosen == GuardTemplate.llamaGuard3_1BCategories
                ? " (S14 Code Interpreter Abuse is a Llama Guard 3 8B category; give it as a custom category)" : ""
            problems.append("excluded category '\(code)' is not in the category list\(hint)")
        }
        let kept = chosen.filter { !excluded.contains($0.code) }
        if kept.isEmpty && problems.isEmpty { problems.append("every category is excluded") }
        if !problems.isEmpty { throw GuardUsageError(description: problems.joined(separator: "; ")) }
        return kept
    }

    public static func format(_ conversation: [Turn], categories: [GuardCategory]? = nil, excluded: [String] = [],
                              template: GuardTemplate = .standard) throws -> String {
        guard let last = conversation.last else { throw GuardUsageError(description: "the Guard conversation is empty") }
        for (i, turn) in conversation.enumerated() {
            let expected = i % 2 == 0 ? "user" : "assistant"
            if turn.role != expected {
                throw GuardUsageError(description: "turn \(i) has role '\(turn.role)', expected '\(expected)'")
            }
        }
        let kept = try activeCategories(categories ?? template.categories, excluded: excluded)
        let p = template.pieces
        let role = template.roles[last.role]!
        var out = p["begin"]! + fill(p["task"]!, ["role": role]) + p["categories_begin"]!
        for c in kept {
            out += fill(p["category"]!, ["code": c.code, "name": c.name])
            if !c.description.isEmpty { out += fill(p["category_description"]!, ["description": c.description]) }
        }
        out += p["categories_end"]! + p["conversation_begin"]!
        for turn in conversation {
            // The message cannot write control tokens (a forged "<|eot_id|>...assistant...safe" stays text).
            let content = ControlTokens.neutralize(strip(turn.content, template.strip))
            out += fill(p["turn"]!, ["role": template.roles[turn.role]!, "content": content])
        }
        return out + p["conversation_end"]! + fill(p["instructions"]!, ["role": role]) + p["end"]!
    }

    /// Strict: "safe", or "unsafe" then one line of comma-separated known codes; tolerates surrounding
    /// whitespace and one trailing <|eot_id|>.
    public static func parseReply(_ text: String, categories: [GuardCategory]? = nil) throws -> GuardVerdict {
        var known: [String: String] = [:]
        for c in try activeCategories(categories) { known[c.code] = c.name }
        var body = strip(text, GuardTemplate.whitespace)
        if body.unicodeScalars.reversed().starts(with: eot.unicodeScalars.reversed()) {
            body = strip(String(String.UnicodeScalarView(body.unicodeScalars.dropLast(eot.unicodeScalars.count))),
                         GuardTemplate.whitespace)
        }
        let lines = body.components(separatedBy: "\n")
        if lines[0] == "safe" {
            guard lines.count == 1 else { throw GuardReplyError(description: "reply '\(text)': 'safe' must be the only line") }
            return GuardVerdict(safe: true, categories: [], names: [])
        }
        guard lines[0] == "unsafe" else {
            throw GuardReplyError(description: "reply '\(text)': first line must be 'safe' or 'unsafe'")
        }
        guard lines.count == 2 else {
            throw GuardReplyError(description: "reply '\(text)': 'unsafe' must be followed by exactly one line of category codes")
        }
        let codes = lines[1].components(separatedBy: ",").map { strip($0, " ") }
        for code in codes where known[code] == nil {
            throw GuardReplyError(description: "reply '\(text)': '\(code)' is not a known category code")
        }
        guard Set(codes).count == codes.count else {
            throw GuardReplyError(description: "reply '\(text)': a category code repeats")
        }
        return GuardVerdict(safe: false, categories: codes, names: codes.map { known[$0]! })
    }

    /// Python's str.strip(chars), on Unicode scalars (Swift's Characters would merge "\r\n" and combining marks).
    public static func strip(_ text: String, _ chars: String) -> String {
        let set = Set(chars.unicodeScalars)
        let scalars = Array(text.unicodeScalars)
        var lo = 0
        var hi = scalars.count
        while lo < hi && set.contains(scalars[lo]) { lo += 1 }
        while hi > lo && set.contains(scalars[hi - 1]) { hi -= 1 }
        return String(String.UnicodeScalarView(scalars[lo..<hi]))
    }

    /// Replaces {key} placeholders in one pass, so text inside a value is never substituted again.
    public static func fill(_ template: String, _ values: [String: String]) -> String {
        let scalars = Array(template.unicodeScalars)
        var out = String.UnicodeScalarView()
        var i = 0
        while i < scalars.count {
            guard let start = scalars[i...].firstIndex(of: "{"),
                  let end = scalars[(start + 1)...].firstIndex(of: "}") else {
                out.append(contentsOf: scalars[i...])
                break
            }
            out.append(contentsOf: scalars[i..<start])
            let key = String(String.UnicodeScalarView(scalars[(start + 1)..<end]))
            if let value = values[key] { out.append(contentsOf: value.unicodeScalars) } else { out.append(contentsOf: scalars[start...end]) }
            i = end + 1
        }
        return String(out)
    }
}
