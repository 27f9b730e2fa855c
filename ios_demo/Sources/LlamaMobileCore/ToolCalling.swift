import Foundation

/// A JSON value that keeps the order of object keys (JSONSerialization does not): tool definitions are written
/// back into the prompt in their given order, as Python and Kotlin write them.
public indirect enum JSONValue: Equatable {
    case null
    case bool(Bool)
    case int(Int64)
    case double(Double)
    case string(String)
    case array([JSONValue])
    case object([(String, JSONValue)])

    public static func == (a: JSONValue, b: JSONValue) -> Bool {
        switch (a, b) {
        case (.null, .null): return true
        case let (.bool(x), .bool(y)): return x == y
        case let (.int(x), .int(y)): return x == y
        case let (.double(x), .double(y)): return x == y
        case let (.string(x), .string(y)): return x.unicodeScalars.elementsEqual(y.unicodeScalars)
        case let (.array(x), .array(y)): return x == y
        case let (.object(x), .object(y)):  // as dictionaries: key order does not matter for equality
            return x.count == y.count && x.allSatisfy { pair in y.first(where: { $0.0 == pair.0 })?.1 == pair.1 }
        default: return false
        }
    }

    public subscript(key: String) -> JSONValue? {
        if case .object(let entries) = self { return entries.first(where: { $0.0 == key })?.1 }
        return nil
    }

    var isString: Bool { if case .string = self { return true } else { return false } }

    /// Strict RFC 8259, as Json.kt.
    public static func parse(_ text: String) throws -> JSONValue {
        var reader = JSONReader(Array(text.unicodeScalars))
        reader.space()
        let value = try reader.value()
        reader.space()
        guard reader.i == reader.s.count else { throw JSONParseError.message("trailing characters") }
        return value
    }
}

public enum JSONParseError: Error { case message(String) }

struct JSONReader {
    let s: [Unicode.Scalar]
    var i = 0
    init(_ s: [Unicode.Scalar]) { self.s = s }

    mutating func space() { while i < s.count, " \t\n\r".unicodeScalars.contains(s[i]) { i += 1 } }

    mutating func value() throws -> JSONValue {
        guard i < s.count else { throw JSONParseError.message("unexpected end") }
        switch s[i] {
        case "{":
            i += 1
            var out: [(String, JSONValue)] = []
            space()
            if i < s.count, s[i] == "}" { i += 1; return .object(out) }
            while true {
                space()
                guard i < s.count, s[i] == "\"" else { throw JSONParseError.message("expected a key") }
                let key = try string()
                space()
                guard i < s.count, s[i] == ":" else { throw JSONParseError.message("expected ':'") }
                i += 1
                space()
                if out.contains(where: { $0.0 == key }) { throw JSONParseError.message("duplicate key") }
                out.append((key, try value()))
                space()
                guard i < s.count else { throw JSONParseError.message("unterminated object") }
                if s[i] == "," { i += 1; continue }
                if s[i] == "}" { i += 1; return .object(out) }
                throw JSONParseError.message("expected ',' or '}'")
            }
        case "[":
            i += 1
            var out: [JSONValue] = []
            space()
            if i < s.count, s[i] == "]" { i += 1; return .array(out) }
            while true {
                space()
                out.append(try value())
                space()
                guard i < s.count else { throw JSONParseError.message("unterminated array") }
                if s[i] == "," { i += 1; continue }
                if s[i] == "]" { i += 1; return .array(out) }
                throw JSONParseError.message("expected ',' or ']'")
            }
        case "\"": return .string(try string())
        case "t": return try literal("true", .bool(true))
        case "f": return try literal("false", .bool(false))
        case "n": return try literal("null", .null)
        default: return try number()
        }
    }

    mutating func literal(_ word: String, _ result: JSONValue) throws -> JSONValue {
        let w = Array(word.unicodeScalars)
        guard i + w.count <= s.count, Array(s[i..<i + w.count]) == w else { throw JSONParseError.message("unexpected character") }
        i += w.count
        return result
    }

    mutating func string() throws -> String {
        i += 1
        var out = String.UnicodeScalarView()
        var pendingHigh: UInt32?
        while true {
            guard i < s.count else { throw JSONParseError.message("unterminated string") }
            let c = s[i]
            i += 1
            if c == "\"" { return String(out) }
            if c.value < 0x20 { throw JSONParseError.message("control character in string") }
            if c != "\\" { out.append(c); continue }
            guard i < s.count else { throw JSONParseError.message("unterminated escape") }
            let e = s[i]
            i += 1
            switch e {
            case "\"", "\\", "/": out.append(e)
            case "b": out.append("\u{08}")
            case "f": out.append("\u{0C}")
            case "n": out.append("\n")
            case "r": out.append("\r")
            case "t": out.append("\t")
            case "u":
                guard i + 4 <= s.count, let code = UInt32(String(String.UnicodeScalarView(s[i..<i + 4])), radix: 16) else {
                    throw JSONParseError.message("bad \\u escape")
                }
                i += 4
                if (0xD800..<0xDC00).contains(code) { pendingHigh = code; continue }
                if (0xDC00..<0xE000).contains(code), let high = pendingHigh {
                    out.append(Unicode.Scalar(0x10000 + ((high - 0xD800) << 10) + (code - 0xDC00))!)
                    pendingHigh = nil
                    continue
                }
                out.append(Unicode.Scalar(code) ?? "\u{FFFD}")
            default: throw JSONParseError.message("bad escape")
            }
        }
    }

    mutating func number() throws -> JSONValue {
        let start = i
        if i < s.count, s[i] == "-" { i += 1 }
        func digit() -> Bool { i < s.count && ("0"..."9").contains(s[i]) }
        guard digit() else { throw JSONParseError.message("unexpected character") }
        if s[i] == "0" { i += 1 } else { while digit() { i += 1 } }
        var integral = true
        if i < s.count, s[i] == "." {
            integral = false
            i += 1
            guard digit() else { throw JSONParseError.message("digit expected") }
            while digit() { i += 1 }
        }
        if i < s.count, s[i] == "e" || s[i] == "E" {
            integral = false
            i += 1
            if i < s.count, s[i] == "+" || s[i] == "-" { i += 1 }
            guard digit() else { throw JSONParseError.message("digit expected") }
            while digit() { i += 1 }
        }
        let text = String(String.UnicodeScalarView(s[start..<i]))
        if integral, let n = Int64(text) { return .int(n) }
        return .double(Double(text)!)
    }
}

/// JSON written as Python's json.dumps(value, ensure_ascii=False) writes it (see JsonWriter in ToolCalling.kt).
public enum JSONWriter {
    public static func write(_ value: JSONValue, indent: Int? = nil) -> String {
        write(value, indent, 0)
    }

    static func write(_ value: JSONValue, _ indent: Int?, _ level: Int) -> String {
        switch value {
        case .null: return "null"
        case .bool(let b): return b ? "true" : "false"
        case .int(let n): return String(n)
        case .double(let d): return double(d)
        case .string(let s): return string(s)
        case .array(let items):
            return container(items.map { write($0, indent, level + 1) }, "[", "]", indent, level)
        case .object(let entries):
            return container(entries.map { string($0.0) + ": " + write($0.1, indent, level + 1) }, "{", "}", indent, level)
        }
    }

    static func container(_ items: [String], _ open: String, _ close: String, _ indent: Int?, _ level: Int) -> String {
        if items.isEmpty { return open + close }
        guard let indent else { return open + items.joined(separator: ", ") + close }
        let inner = String(repeating: " ", count: indent * (level + 1))
        return open + "\n" + items.map { inner + $0 }.joined(separator: ",\n") + "\n"
            + String(repeating: " ", count: indent * level) + close
    }

    public static func string(_ s: String) -> String {
        var out = "\""
        for c in s.unicodeScalars {
            switch c {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            case "\u{08}": out += "\\b"
            case "\u{0C}": out += "\\f"
            default:
                if c.value < 0x20 { out += String(format: "\\u%04x", c.value) } else { out.unicodeScalars.append(c) }
            }
        }
        return out + "\""
    }

    /// Python's repr of a float: shortest digits, exponent form below 1e-4 and from 1e16 on.
    public static func double(_ d: Double) -> String {
        if d.isNaN { return "NaN" }
        if d.isInfinite { return d > 0 ? "Infinity" : "-Infinity" }
        if d == 0 { return d.sign == .minus ? "-0.0" : "0.0" }
        // Swift's description has the shortest round-trip digits; only their layout differs from Python's.
        let text = abs(d).description.lowercased()
        let parts = text.split(separator: "e", maxSplits: 1)
        let mantissa = String(parts[0])
        var exp = parts.count > 1 ? Int(parts[1])! : 0
        let dot = mantissa.firstIndex(of: ".")
        let intPart = dot.map { String(mantissa[..<$0]) } ?? mantissa
        let fracPart = dot.map { String(mantissa[mantissa.index(after: $0)...]) } ?? ""
        var digits = intPart + fracPart
        exp += intPart.count - 1
        let lead = digits.prefix(while: { $0 == "0" }).count
        digits.removeFirst(lead)
        exp -= lead
        while digits.count > 1 && digits.hasSuffix("0") { digits.removeLast() }
        let sign = d < 0 ? "-" : ""
        if exp >= -4 && exp < 16 {
            if exp < 0 { return sign + "0." + String(repeating: "0", count: -exp - 1) + digits }
            if digits.count <= exp + 1 { return sign + digits + String(repeating: "0", count: exp + 1 - digits.count) + ".0" }
            let cut = digits.index(digits.startIndex, offsetBy: exp + 1)
            return sign + digits[..<cut] + "." + digits[cut...]
        }
        let m = digits.count == 1 ? digits : String(digits.first!) + "." + digits.dropFirst()
        return sign + m + "e" + (exp < 0 ? "-" : "+") + (abs(exp) < 10 ? "0" : "") + String(abs(exp))
    }
}

public struct ToolCall: Equatable {
    public let name: String
    public let arguments: [(String, JSONValue)]

    public init(name: String, arguments: [(String, JSONValue)]) {
        self.name = name
        self.arguments = arguments
    }

    init(json: JSONValue) throws {
        guard case .string(let name)? = json["name"] else { throw ChatTemplateError.message("a tool call needs a name") }
        let args = json["arguments"] ?? .object([])
        guard case .object(let entries) = args else { throw ChatTemplateError.message("the arguments of \(name) must be an object") }
        self.init(name: name, arguments: entries)
    }

    public var json: JSONValue { .object([("name", .string(name)), ("arguments", .object(arguments))]) }

    public static func == (a: ToolCall, b: ToolCall) -> Bool { a.json == b.json }
}

/// A tool in Meta's shape: parameters = {"type": "dict", "required": [...], "properties": {...}}.
public struct Tool: Equatable {
    public let name: String
    public let description: String
    public let required: [String]
    public let properties: [(String, JSONValue)]

    public static func == (a: Tool, b: Tool) -> Bool { a.json == b.json }

    public var json: JSONValue {
        .object([("name", .string(name)), ("description", .string(description)),
                 ("parameters", .object([("type", .string("dict")), ("required", .array(required.map { .string($0) })),
                                         ("properties", .object(properties))]))])
    }
}

public struct ParsedReply {
    public let text: String
    public let calls: [ToolCall]
    public let error: String?
    public var isCall: Bool { !calls.isEmpty }
}

public struct ToolDefinitionError: Error { public let message: String }

/// Tool calling as Llama 3.2 does it: the formatter and strict parser of runtime_harness/tools.py and ToolCalling.kt
/// (tests/vectors/tool_prompts.json, tool_replies.json).
public enum ToolCalling {
    public static let instructions =
        "You are an expert in composing functions. You are given a question and a set of possible functions.\n" +
        "Based on the question, you will need to make one or more function/tool calls to achieve the purpose.\n" +
        "If none of the function can be used, point it out. If the given question lacks the parameters required " +
        "by the function,\nalso point it out. You should only return the function call in tools call sections.\n\n" +
        "If you decide to invoke any of the function(s), you MUST put it in the format of " +
        "[func_name1(params_name1=params_value1, params_name2=params_value2...), func_name2(params)]\n" +
        "You SHOULD NOT include any other text in the response.\n\n" +
        "Here is a list of functions in JSON format that you can invoke.\n\n"
    public static let pythonTag = "<|python_tag|>"

    static func isName(_ s: String) -> Bool {
        guard let first = s.unicodeScalars.first, first == "_" || (first.isASCII && CharacterSet.letters.contains(first)) else { return false }
        return s.unicodeScalars.allSatisfy { $0.isASCII && (CharacterSet.alphanumerics.contains($0) || "_.-".unicodeScalars.contains($0)) }
    }

    public static func readTools(_ json: JSONValue) throws -> [Tool] {
        var data = json
        if case .array? = json["tools"] { data = json["tools"]! }
        guard case .array(let items) = data else { throw ToolDefinitionError(message: "tools must be a JSON list of function definitions") }
        var tools: [Tool] = []
        var problems: [String] = []
        for (i, item) in items.enumerated() {
            let spec: JSONValue? = item["type"] == JSONValue.string("function") ? item["function"] : Optional(item)
            guard let spec, case .object = spec else { problems.append("tool \(i + 1) is not an object"); continue }
            guard case .string(let name)? = spec["name"], isName(name) else { problems.append("tool \(i + 1) has no valid name"); continue }
            let description = spec["description"] ?? .string("")
            if !description.isString { problems.append("tool \(name): description must be a string") }
            let params = spec["parameters"] ?? .object([])
            guard case .object = params, case .object(let properties) = params["properties"] ?? .object([]),
                  case .array(let required) = params["required"] ?? .array([]), required.allSatisfy({ $0.isString }) else {
                problems.append("tool \(name): parameters must be a JSON schema object with properties and required")
                continue
            }
            if tools.contains(where: { $0.name == name }) { problems.append("tool \(name) is defined twice") }
            var text = ""
            if case .string(let d) = description { text = d }
            tools.append(Tool(name: name, description: text,
                              required: required.compactMap { if case .string(let r) = $0 { return r } else { return nil } },
                              properties: properties))
        }
        if !problems.isEmpty { throw ToolDefinitionError(message: problems.joined(separator: "; ")) }
        return tools
    }

    public static func systemPrompt(_ tools: [Tool], system: String? = nil) -> String {
        instructions + JSONWriter.write(.array(tools.map { $0.json }), indent: 4) + ((system ?? "").isEmpty ? "" : "\n\n" + system!)
    }

    public static func withTools(_ messages: [ChatMessage], _ tools: [Tool]) -> [ChatMessage] {
        if tools.isEmpty { return messages }
        let system = messages.first?.role == "system" ? messages[0].content : nil
        let rest = system != nil ? Array(messages.dropFirst()) : messages
        return [ChatMessage(role: "system", content: systemPrompt(tools, system: system))] + rest
    }

    public static func renderMessages(_ messages: [ChatMessage]) -> [ChatMessage] {
        messages.map { m in
            m.role == "assistant" && !m.toolCalls.isEmpty ? ChatMessage(role: "assistant", content: m.content + formatCalls(m.toolCalls)) : m
        }
    }

    public static func formatCalls(_ calls: [ToolCall]) -> String {
        "[" + calls.map { c in c.name + "(" + c.arguments.map { "\($0.0)=\(literal($0.1))" }.joined(separator: ", ") + ")" }
            .joined(separator: ", ") + "]"
    }

    static func literal(_ v: JSONValue) -> String {
        switch v {
        case .bool(let b): return b ? "True" : "False"
        case .null: return "None"
        case .array(let items): return "[" + items.map(literal).joined(separator: ", ") + "]"
        case .object(let entries): return "{" + entries.map { JSONWriter.string($0.0) + ": " + literal($0.1) }.joined(separator: ", ") + "}"
        default: return JSONWriter.write(v)
        }
    }

    struct InvalidCall: Error { let message: String }

    /// Calls, or text (with `error` when it looked like a call). Never throws.
    public static func parseReply(_ reply: String, tools: [Tool]) -> ParsedReply {
        let text = reply.hasPrefix(pythonTag) ? String(reply.dropFirst(pythonTag.count)) : reply
        let body = text.trimmingCharacters(in: .whitespacesAndNewlines)
        do {
            let calls: [ToolCall]
            if body.range(of: #"^\[\s*[A-Za-z_][A-Za-z0-9_.\-]*\s*\("#, options: .regularExpression) != nil {
                var parser = PythonCalls(Array(body.unicodeScalars))
                calls = try parser.calls()
            } else if body.range(of: #"^\{\s*"(name|type)"\s*:"#, options: .regularExpression) != nil {
                calls = try jsonCall(body)
            } else {
                return ParsedReply(text: text, calls: [], error: nil)
            }
            for call in calls { try check(call, tools) }
            return ParsedReply(text: text, calls: calls, error: nil)
        } catch let e as InvalidCall {
            return ParsedReply(text: text, calls: [], error: e.message)
        } catch {
            return ParsedReply(text: text, calls: [], error: "\(error)")
        }
    }

    static func check(_ call: ToolCall, _ tools: [Tool]) throws {
        guard let tool = tools.first(where: { $0.name == call.name }) else {
            throw InvalidCall(message: "the model called '\(call.name)', which is not one of the tools offered")
        }
        if let missing = tool.required.first(where: { r in !call.arguments.contains(where: { $0.0 == r }) }) {
            throw InvalidCall(message: "\(call.name): missing required argument '\(missing)'")
        }
        if !tool.properties.isEmpty,
           let unknown = call.arguments.first(where: { a in !tool.properties.contains(where: { $0.0 == a.0 }) }) {
            throw InvalidCall(message: "\(call.name): unknown argument '\(unknown.0)'")
        }
    }

    static func jsonCall(_ body: String) throws -> [ToolCall] {
        guard let data = try? JSONValue.parse(body) else { throw InvalidCall(message: "the call is not valid JSON (or stops before its end)") }
        guard case .string(let name)? = data["name"] else { throw InvalidCall(message: "a JSON call needs a \"name\"") }
        let args = data["parameters"] ?? data["arguments"] ?? .object([])
        guard case .object(let entries) = args else { throw InvalidCall(message: "\(name): the arguments are not a JSON object") }
        return [ToolCall(name: name, arguments: entries)]
    }

    /// `[name(key=literal, ...), ...]` with Python or JSON literals; nothing after the closing bracket.
    struct PythonCalls {
        let s: [Unicode.Scalar]
        var i = 0
        init(_ s: [Unicode.Scalar]) { self.s = s }

        func fail(_ what: String) -> InvalidCall {
            i >= s.count ? InvalidCall(message: "the reply stops inside a tool call")
                : InvalidCall(message: "not a valid tool call: \(what) at character \(i)")
        }

        mutating func space() { while i < s.count, " \t\r\n".unicodeScalars.contains(s[i]) { i += 1 } }
        mutating func peek() -> Unicode.Scalar? { space(); return i < s.count ? s[i] : nil }

        mutating func expect(_ c: Unicode.Scalar) throws {
            space()
            guard i < s.count, s[i] == c else { throw fail("expected '\(c)'") }
            i += 1
        }

        static func nameStart(_ c: Unicode.Scalar) -> Bool { c == "_" || (c.isASCII && CharacterSet.letters.contains(c)) }
        static func nameChar(_ c: Unicode.Scalar) -> Bool {
            c.isASCII && (CharacterSet.alphanumerics.contains(c) || "_.-".unicodeScalars.contains(c))
        }

        mutating func name() throws -> String {
            space()
            guard i < s.count, Self.nameStart(s[i]) else { throw fail("expected a name") }
            let start = i
            while i < s.count, Self.nameChar(s[i]) { i += 1 }
            return String(String.UnicodeScalarView(s[start..<i]))
        }

        mutating func calls() throws -> [ToolCall] {
            var out: [ToolCall] = []
            try expect("[")
            while true {
                let name = try name()
                try expect("(")
                var args: [(String, JSONValue)] = []
                if peek() != ")" {
                    while true {
                        let key = try self.name()
                        try expect("=")
                        if args.contains(where: { $0.0 == key }) { throw fail("argument '\(key)' given twice") }
                        args.append((key, try value(key)))
                        if peek() == "," { i += 1; continue }
                        break
                    }
                }
                try expect(")")
                out.append(ToolCall(name: name, arguments: args))
                if peek() == "," { i += 1; continue }
                break
            }
            try expect("]")
            space()
            guard i == s.count else { throw InvalidCall(message: "text after the tool calls at character \(i)") }
            return out
        }

        mutating func value(_ key: String) throws -> JSONValue {
            let c = peek()
            if c == "'" || c == "\"" { return .string(try string()) }
            if c == "[" {
                i += 1
                var items: [JSONValue] = []
                if peek() == "]" { i += 1; return .array(items) }
                while true {
                    items.append(try value(key))
                    if peek() == "," {
                        i += 1
                        if peek() == "]" { i += 1; return .array(items) }
                        continue
                    }
                    try expect("]")
                    return .array(items)
                }
            }
            if c == "{" {
                i += 1
                var entries: [(String, JSONValue)] = []
                if peek() == "}" { i += 1; return .object(entries) }
                while true {
                    let q = peek()
                    guard q == "'" || q == "\"" else { throw fail("expected a string key") }
                    let k = try string()
                    try expect(":")
                    entries.append((k, try value(key)))
                    if peek() == "," { i += 1; continue }
                    try expect("}")
                    return .object(entries)
                }
            }
            if let number = number() { return number }
            for (word, result) in [("True", JSONValue.bool(true)), ("False", .bool(false)), ("None", .null),
                                   ("true", .bool(true)), ("false", .bool(false)), ("null", .null)] {
                let w = Array(word.unicodeScalars)
                let end = i + w.count
                if end <= s.count, Array(s[i..<end]) == w,
                   !(end < s.count && (CharacterSet.alphanumerics.contains(s[end]) || s[end] == "_")) {
                    i = end
                    return result
                }
            }
            if i >= s.count { throw fail("") }
            throw InvalidCall(message: "argument '\(key)' is not a JSON or Python literal")
        }

        /// -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)? at i, or nil (nothing consumed).
        mutating func number() -> JSONValue? {
            var j = i
            func digit(_ k: Int) -> Bool { k < s.count && ("0"..."9").contains(s[k]) }
            if j < s.count, s[j] == "-" { j += 1 }
            guard digit(j) else { return nil }
            if s[j] == "0" { j += 1 } else { while digit(j) { j += 1 } }
            var integral = true
            if j < s.count, s[j] == ".", digit(j + 1) { integral = false; j += 1; while digit(j) { j += 1 } }
            if j < s.count, s[j] == "e" || s[j] == "E" {
                var k = j + 1
                if k < s.count, s[k] == "+" || s[k] == "-" { k += 1 }
                if digit(k) { integral = false; j = k; while digit(j) { j += 1 } }
            }
            let text = String(String.UnicodeScalarView(s[i..<j]))
            i = j
            if integral, let n = Int64(text) { return .int(n) }
            return .double(Double(text)!)
        }

        mutating func string() throws -> String {
            let quote = s[i]
            i += 1
            var out = String.UnicodeScalarView()
            while true {
                guard i < s.count else { throw fail("") }
                let c = s[i]
                i += 1
                if c == quote { return String(out) }
                if c == "\n" { throw InvalidCall(message: "a string argument runs past the end of its line") }
                if c != "\\" { out.append(c); continue }
                guard i < s.count else { throw fail("") }
                let e = s[i]
                i += 1
                switch e {
                case "n": out.append("\n")
                case "t": out.append("\t")
                case "r": out.append("\r")
                case "b": out.append("\u{08}")
                case "f": out.append("\u{0C}")
                case "\\", "'", "\"", "/": out.append(e)
                case "u":
                    guard i + 4 <= s.count else { i = s.count; throw fail("") }
                    guard let code = UInt32(String(String.UnicodeScalarView(s[i..<i + 4])), radix: 16) else {
                        throw InvalidCall(message: "a bad \\u escape in a string argument")
                    }
                    out.append(Unicode.Scalar(code) ?? "\u{FFFD}")
                    i += 4
                default: throw InvalidCall(message: "an unknown escape \\\(e) in a string argument")
                }
            }
        }
    }
}
