import Foundation

/// The parts of manifest.json (llama_mobile/core/schema/manifest.schema.json) an app needs. Like the Python
/// reader, it refuses a format or schema_version it does not know. Schema version 2 (export --targets) adds a required
/// "variants" list, which version 1 may not have.
public struct ManifestError: Error, CustomStringConvertible {
    public let kind: String  // "json", "format", "schema_version", "missing:<field>", "field"
    public let description: String
}

public struct FileEntry: Codable, Equatable {
    public let size: Int64
    public let sha256: String
}

public struct Manifest: Decodable {
    public static let format = "llama-mobile-bundle"
    public static let supportedSchemaVersions = [1, 2]
    public static let variantsSchemaVersion = 2
    public static let variantStatuses = ["ok", "skipped"]
    public static let variantOses = ["android", "ios"]
    static let required = ["format", "schema_version", "tool", "model", "recipe", "target", "runtime", "tokenizer",
                           "special_tokens", "prompt_template", "files"]

    public struct Model: Decodable { public let preset: String; public let task: String }
    /// runtime.attention_sink (export --attention-sink SINK,WINDOW): the program keeps the first `sinkSize` positions
    /// and a ring of 2 x `windowSize` after them, and takes any position: a conversation has no end of context
    /// (`ChatSession.nextPrompt(..., slidingWindow: true)`). Absent in other bundles.
    public struct AttentionSink: Decodable, Equatable {
        public let sinkSize: Int
        public let windowSize: Int
        enum CodingKeys: String, CodingKey { case sinkSize = "sink_size", windowSize = "window_size" }
    }
    public struct Runtime: Decodable {
        public let program: String
        /// ExecuTorch external weights file (model.ptd) beside the program; nil when absent or null.
        public let weights: String?
        public let contextLength: Int
        public let maxSeqLen: Int
        public let attentionSink: AttentionSink?
        enum CodingKeys: String, CodingKey {
            case program, weights, contextLength = "context_length", maxSeqLen = "max_seq_len"
            case attentionSink = "attention_sink"
        }
    }
    public struct Tokenizer: Decodable { public let file: String; public let kind: String }
    /// A LoRA adapter (export --adapter NAME=PATH): its own small program under adapters/ that reads the same external
    /// weights file as the base program. Switching adapters opens a module on `program` with the bundle's weightsPath.
    public struct Adapter: Decodable, Equatable {
        public let name: String
        public let program: String
        public let rank: Int
        public let scale: Double
        public let targets: [String]
    }
    public struct SpecialTokens: Decodable {
        public let bosId: Int
        public let eosIds: [Int]
        enum CodingKeys: String, CodingKey { case bosId = "bos_id", eosIds = "eos_ids" }
    }

    public let schemaVersion: Int
    public let model: Model
    public let runtime: Runtime
    public let tokenizer: Tokenizer
    public let specialTokens: SpecialTokens
    public let promptTemplate: ChatTemplate
    public let files: [String: FileEntry]
    let adapterList: [Adapter]?
    /// The "adapters" list; empty in bundles without adapters.
    public var adapters: [Adapter] { adapterList ?? [] }
    /// export --targets (schema version 2): one per target, the top level being the first ok one's; empty in v1.
    public internal(set) var variants: [Variant] = []

    enum CodingKeys: String, CodingKey {
        case schemaVersion = "schema_version", model, runtime, tokenizer
        case specialTokens = "special_tokens", promptTemplate = "prompt_template", files
        case adapterList = "adapters"
    }

    public func adapter(_ name: String) -> Adapter? { adapters.first { $0.name == name } }

    /// ^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$ (the schema's adapter name), on ASCII bytes.
    public static func isAdapterName(_ name: String) -> Bool {
        let bytes = Array(name.utf8)
        func alphanumeric(_ b: UInt8) -> Bool { (48...57).contains(b) || (65...90).contains(b) || (97...122).contains(b) }
        guard let first = bytes.first, alphanumeric(first), bytes.count <= 64 else { return false }
        return bytes.allSatisfy { alphanumeric($0) || $0 == UInt8(ascii: "_") || $0 == UInt8(ascii: "-") }
    }

    /// ^adapters/[A-Za-z0-9][A-Za-z0-9_-]{0,63}[.]pte$ (the schema's adapter program): inside adapters/, no '..'.
    public static func isAdapterProgram(_ program: String) -> Bool {
        let bytes = Array(program.utf8), head = Array("adapters/".utf8), tail = Array(".pte".utf8)
        guard bytes.count > head.count + tail.count, bytes.starts(with: head), bytes.suffix(tail.count).elementsEqual(tail)
        else { return false }
        return isAdapterName(String(decoding: bytes[head.count..<(bytes.count - tail.count)], as: UTF8.self))
    }

    public static func parse(_ data: Data) throws -> Manifest {
        let top: [String: Any]
        do {
            guard let object = try JSONSerialization.jsonObject(with: data) as? [String: Any] else {
                throw ManifestError(kind: "json", description: "manifest is not a JSON object")
            }
            top = object
        } catch let error as ManifestError {
            throw error
        } catch {
            throw ManifestError(kind: "json", description: "manifest is not valid JSON: \(error)")
        }
        guard top["format"] as? String == format else {
            throw ManifestError(kind: "format", description: "not a llama-mobile manifest")
        }
        struct Version: Decodable { let schema_version: Int? }
        let version = (try? JSONDecoder().decode(Version.self, from: data))?.schema_version
        guard let version = version, supportedSchemaVersions.contains(version) else {
            throw ManifestError(kind: "schema_version",
                                description: "manifest schema version \(String(describing: version)) is not supported")
        }
        for key in required where top[key] == nil {
            throw ManifestError(kind: "missing:\(key)", description: "manifest lacks \"\(key)\"")
        }
        if version == variantsSchemaVersion, top["variants"] == nil {
            throw ManifestError(kind: "missing:variants", description: "a schema version 2 manifest lacks \"variants\"")
        }
        if version != variantsSchemaVersion, top["variants"] != nil {
            throw ManifestError(kind: "field", description: "\"variants\" needs schema version 2, not \(version)")
        }
        if top["adapters"] is NSNull { throw ManifestError(kind: "field", description: "adapters must be an array") }
        var manifest: Manifest
        do {
            manifest = try JSONDecoder().decode(Manifest.self, from: data)
            if top["variants"] != nil {
                let json = try JSONValue.parse(String(decoding: data, as: UTF8.self))
                manifest.variants = try Variant.list(from: json["variants"] ?? .null)
            }
        } catch {
            throw ManifestError(kind: "field", description: "manifest field: \(error)")
        }
        try manifest.check()
        return manifest
    }

    func check() throws {
        func fail(_ what: String) -> ManifestError { ManifestError(kind: "field", description: what) }
        guard ["chat", "guard"].contains(model.task) else { throw fail("model.task must be chat or guard") }
        guard !specialTokens.eosIds.isEmpty else { throw fail("eos_ids must not be empty") }
        guard promptTemplate.user.contains("{content}") else { throw fail("prompt_template.user lacks {content}") }
        guard files.count >= 2 else { throw fail("files must list the program and the tokenizer") }
        for (name, entry) in files {
            let hex = entry.sha256.unicodeScalars.allSatisfy { ("0"..."9").contains($0) || ("a"..."f").contains($0) }
            guard entry.sha256.unicodeScalars.count == 64, hex else { throw fail("files[\(name)].sha256 must be 64 hex digits") }
            guard entry.size >= 0 else { throw fail("files[\(name)].size must not be negative") }
        }
        for adapter in adapters {
            let name = adapter.name
            guard Manifest.isAdapterName(name) else { throw fail("adapter name \"\(name)\" must be 1-64 letters, digits, '-' or '_'") }
            guard Manifest.isAdapterProgram(adapter.program) else {
                throw fail("adapters[\(name)].program \"\(adapter.program)\" must be adapters/<name>.pte")
            }
            guard adapter.rank >= 1 else { throw fail("adapters[\(name)].rank must be at least 1") }
        }
        var seen = Set<String>()
        for adapter in adapters {
            guard seen.insert(adapter.name).inserted else { throw fail("adapter name \"\(adapter.name)\" is listed twice") }
        }
        guard adapters.isEmpty || runtime.weights != nil else {
            throw fail("the manifest lists adapters but no base weights file (runtime.weights)")
        }
        // The "variants" list (schema version 2): two or more, each target once; an ok one names its program.
        if schemaVersion == Manifest.variantsSchemaVersion, variants.count < 2 {
            throw fail("variants must list at least 2 targets")
        }
        var targets = Set<String>()
        for variant in variants {
            let target = variant.target
            guard targets.insert(target).inserted else { throw fail("variant \"\(target)\" is listed twice") }
            var problem: String?
            if !Manifest.variantStatuses.contains(variant.status) {
                problem = "status must be ok or skipped"
            } else if variant.status == "ok", variant.program == nil {
                problem = "program is null in an ok variant"
            } else if let os = variant.requires.os, !Manifest.variantOses.contains(os) {
                problem = "requires.os must be android, ios or null"
            }
            if let problem { throw fail("variants[\(target)].\(problem)") }
        }
    }
}
