import Foundation
import XCTest
@testable import LlamaMobileCore

/// The shared vectors in tests/vectors/ (the Python and Kotlin tests read the same files).
final class VectorTests: XCTestCase {
    static let vectors = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("tests/vectors")

    struct Cases<T: Decodable>: Decodable { let cases: [T] }

    func load<T: Decodable>(_ name: String, as: T.Type) throws -> [T] {
        let data = try Data(contentsOf: Self.vectors.appendingPathComponent(name))
        return try JSONDecoder().decode(Cases<T>.self, from: data).cases
    }

    struct PromptCase: Decodable {
        let name: String
        let conversation: [Turn]
        let categories: [GuardCategory]?
        let excluded: [String]?
        let expected: String?
        let error: String?
    }

    struct ReplyCase: Decodable {
        struct Verdict: Decodable { let safe: Bool; let categories: [String]; let names: [String] }
        let name: String
        let reply: String
        let categories: [GuardCategory]?
        let expected: Verdict?
        let error: String?
    }

    struct ChatCase: Decodable { let template: ChatTemplate; let message: String; let expected: String }

    struct ManifestCase: Decodable {
        let file: String
        let valid: Bool
        let task: String?
        let template: String?
        let bos_id: Int?
        let eos_ids: [Int]?
        let tokenizer: String?
        let context_length: Int?
        let weights: String?
        let error: String?
    }

    func testGuardPrompts() throws {
        let cases = try load("guard_prompts.json", as: PromptCase.self)
        XCTAssertGreaterThanOrEqual(cases.count, 6)
        for c in cases {
            if c.error != nil {
                XCTAssertThrowsError(try GuardPrompt.format(c.conversation, categories: c.categories, excluded: c.excluded ?? []),
                                     c.name) { XCTAssertTrue($0 is GuardUsageError, c.name) }
            } else {
                let prompt = try GuardPrompt.format(c.conversation, categories: c.categories, excluded: c.excluded ?? [])
                // Compare scalars: Swift's String == treats canonically equivalent text as equal.
                XCTAssertEqual(Array(prompt.unicodeScalars), Array(c.expected!.unicodeScalars), c.name)
            }
        }
    }

    func testGuardReplies() throws {
        let cases = try load("guard_replies.json", as: ReplyCase.self)
        XCTAssertGreaterThanOrEqual(cases.count, 12)
        for c in cases {
            if c.error != nil {
                XCTAssertThrowsError(try GuardPrompt.parseReply(c.reply, categories: c.categories), c.name) {
                    XCTAssertTrue($0 is GuardReplyError, c.name)
                }
            } else {
                let verdict = try GuardPrompt.parseReply(c.reply, categories: c.categories)
                XCTAssertEqual(verdict, GuardVerdict(safe: c.expected!.safe, categories: c.expected!.categories,
                                                     names: c.expected!.names), c.name)
            }
        }
    }

    func testBuiltInGuardTemplateEqualsThePythonOne() throws {
        let data = try Data(contentsOf: Self.vectors.appendingPathComponent("guard_template.json"))
        XCTAssertEqual(try JSONDecoder().decode(GuardTemplate.self, from: data), GuardTemplate.standard)
    }

    func testChatPrompts() throws {
        for c in try load("chat_prompts.json", as: ChatCase.self) {
            XCTAssertEqual(Array(c.template.format(c.message).unicodeScalars), Array(c.expected.unicodeScalars))
        }
    }

    func testManifests() throws {
        let folder = Self.vectors.appendingPathComponent("manifests")
        for c in try load("manifests/index.json", as: ManifestCase.self) {
            let data = try Data(contentsOf: folder.appendingPathComponent(c.file))
            if c.valid {
                let m = try Manifest.parse(data)
                XCTAssertEqual(m.model.task, c.task, c.file)
                XCTAssertEqual(m.promptTemplate.name, c.template, c.file)
                XCTAssertEqual(m.specialTokens.bosId, c.bos_id, c.file)
                XCTAssertEqual(m.specialTokens.eosIds, c.eos_ids, c.file)
                XCTAssertEqual(m.tokenizer.file, c.tokenizer, c.file)
                XCTAssertEqual(m.runtime.contextLength, c.context_length, c.file)
                XCTAssertEqual(m.runtime.weights, c.weights, c.file)
            } else {
                XCTAssertThrowsError(try Manifest.parse(data), c.file) {
                    XCTAssertEqual(($0 as? ManifestError)?.kind, c.error, c.file)
                }
            }
        }
    }

    func testAttentionSinkIsReadWhenPresent() throws {
        let text = try String(contentsOf: Self.vectors.appendingPathComponent("manifests/chat_smollm2.json"), encoding: .utf8)
        XCTAssertNil(try Manifest.parse(Data(text.utf8)).runtime.attentionSink)
        let sink = text.replacingOccurrences(of: "\"context_length\": 512,",
            with: "\"attention_sink\": {\"sink_size\": 4, \"window_size\": 254}, \"context_length\": 512,")
        let runtime = try Manifest.parse(Data(sink.utf8)).runtime
        XCTAssertEqual(runtime.attentionSink?.sinkSize, 4)
        XCTAssertEqual(runtime.attentionSink?.windowSize, 254)
    }

    func testBundleVerifiesAndTamperingIsRefused() throws {
        let source = Self.vectors.appendingPathComponent("bundle")
        XCTAssertEqual(try VerifiedBundle.open(source).manifest.model.preset, "smollm2-135m-instruct")
        let copy = FileManager.default.temporaryDirectory.appendingPathComponent(UUID().uuidString)
        try FileManager.default.copyItem(at: source, to: copy)
        defer { try? FileManager.default.removeItem(at: copy) }
        let program = copy.appendingPathComponent("model.pte")
        try Data("not a real ExecuTorch program; bytes for hashing TESTS\n".utf8).write(to: program)
        XCTAssertThrowsError(try VerifiedBundle.open(copy)) { XCTAssertTrue($0 is BundleError) }
        XCTAssertNil(try VerifiedBundle.open(source).weightsPath)  // no runtime.weights: the program holds them
    }

    func testBundleWithExternalWeightsVerifies() throws {
        let source = Self.vectors.appendingPathComponent("bundle_weights")
        let bundle = try VerifiedBundle.open(source)
        XCTAssertEqual(bundle.manifest.runtime.weights, "model.ptd")
        XCTAssertEqual(bundle.weightsPath, source.appendingPathComponent("model.ptd").path)
        XCTAssertNotNil(bundle.manifest.files["model.ptd"])
    }

    /// A fresh copy of the bundle_weights vector, damaged by `damage`; the error VerifiedBundle.open throws.
    func openDamagedWeightsBundle(_ damage: (URL) throws -> Void) throws -> Error? {
        try openDamagedBundle("bundle_weights", damage)
    }

    /// A fresh copy of the vector bundle `source`, damaged by `damage`; the error VerifiedBundle.open throws.
    func openDamagedBundle(_ source: String, _ damage: (URL) throws -> Void) throws -> Error? {
        let copy = FileManager.default.temporaryDirectory.appendingPathComponent(UUID().uuidString)
        try FileManager.default.copyItem(at: Self.vectors.appendingPathComponent(source), to: copy)
        defer { try? FileManager.default.removeItem(at: copy) }
        _ = try VerifiedBundle.open(copy)  // the intact copy passes
        try damage(copy)
        do {
            _ = try VerifiedBundle.open(copy)
            return nil
        } catch {
            return error
        }
    }

    func testCorruptMissingOrUnlistedWeightsAreRefused() throws {
        // Same size, different bytes: only the SHA-256 can tell.
        let corrupt = try XCTUnwrap(try openDamagedWeightsBundle { dir in
            let url = dir.appendingPathComponent("model.ptd")
            let text = try String(contentsOf: url, encoding: .utf8)
            try Data(text.uppercased().utf8).write(to: url)
        })
        XCTAssertTrue("\(corrupt)".contains("model.ptd does not match its SHA-256"), "\(corrupt)")
        let missing = try XCTUnwrap(try openDamagedWeightsBundle { dir in
            try FileManager.default.removeItem(at: dir.appendingPathComponent("model.ptd"))
        })
        XCTAssertTrue("\(missing)".contains("model.ptd is missing"), "\(missing)")
        // runtime.weights still names model.ptd, but files lists (and hashes) it under another name.
        let unlisted = try XCTUnwrap(try openDamagedWeightsBundle { dir in
            try FileManager.default.copyItem(at: dir.appendingPathComponent("model.ptd"),
                                             to: dir.appendingPathComponent("copy.ptd"))
            let url = dir.appendingPathComponent("manifest.json")
            let text = try String(contentsOf: url, encoding: .utf8)
            XCTAssertTrue(text.contains("\"model.ptd\": {"))
            try Data(text.replacingOccurrences(of: "\"model.ptd\": {", with: "\"copy.ptd\": {").utf8).write(to: url)
        })
        XCTAssertTrue(unlisted is BundleError)
        XCTAssertTrue("\(unlisted)".contains("runtime.weights names model.ptd"), "\(unlisted)")
    }

    func testWeightsMustBeAStringOrNull() throws {
        let url = Self.vectors.appendingPathComponent("bundle_weights/manifest.json")
        let text = try String(contentsOf: url, encoding: .utf8)
        let asNull = text.replacingOccurrences(of: "\"weights\": \"model.ptd\"", with: "\"weights\": null")
        XCTAssertNotEqual(asNull, text)
        XCTAssertNil(try Manifest.parse(Data(asNull.utf8)).runtime.weights)
        let asNumber = text.replacingOccurrences(of: "\"weights\": \"model.ptd\"", with: "\"weights\": 7")
        XCTAssertThrowsError(try Manifest.parse(Data(asNumber.utf8))) {
            XCTAssertEqual(($0 as? ManifestError)?.kind, "field")
        }
    }

    func testBundleWithAdaptersVerifiesAndResolvesTheirPrograms() throws {
        let source = Self.vectors.appendingPathComponent("bundle_adapters")
        let bundle = try VerifiedBundle.open(source)
        XCTAssertEqual(bundle.adapterNames, ["support", "sql"])
        XCTAssertEqual(bundle.manifest.adapters.first, Manifest.Adapter(name: "support", program: "adapters/support.pte",
                                                                        rank: 16, scale: 2.0,
                                                                        targets: ["attention.wq", "attention.wv"]))
        XCTAssertEqual(try bundle.adapterProgramPath("sql"), source.appendingPathComponent("adapters/sql.pte").path)
        XCTAssertEqual(bundle.weightsPath, source.appendingPathComponent("model.ptd").path)  // every adapter reads it
        XCTAssertThrowsError(try bundle.adapterProgramPath("legal")) {
            XCTAssertTrue($0 is BundleError)
            XCTAssertTrue("\($0)".hasSuffix("use one of: support, sql"), "\($0)")
        }
    }

    func testManifestsWithoutAdaptersHaveNone() throws {
        for name in ["chat_smollm2.json", "chat_smollm2_weights.json", "guard_llama_guard_3_1b.json"] {
            let data = try Data(contentsOf: Self.vectors.appendingPathComponent("manifests/\(name)"))
            XCTAssertEqual(try Manifest.parse(data).adapters, [], name)
        }
        let bundle = try VerifiedBundle.open(Self.vectors.appendingPathComponent("bundle_weights"))
        XCTAssertEqual(bundle.adapterNames, [])
        XCTAssertThrowsError(try bundle.adapterProgramPath("support")) { XCTAssertTrue($0 is BundleError) }
    }

    func testTamperedMissingOrUnlistedAdapterProgramsAreRefused() throws {
        let corrupt = try XCTUnwrap(try openDamagedBundle("bundle_adapters") { dir in
            let url = dir.appendingPathComponent("adapters/support.pte")
            let text = try String(contentsOf: url, encoding: .utf8)
            try Data(text.uppercased().utf8).write(to: url)
        })
        XCTAssertTrue("\(corrupt)".contains("adapters/support.pte does not match its SHA-256"), "\(corrupt)")
        let missing = try XCTUnwrap(try openDamagedBundle("bundle_adapters") { dir in
            try FileManager.default.removeItem(at: dir.appendingPathComponent("adapters/sql.pte"))
        })
        XCTAssertTrue("\(missing)".contains("adapters/sql.pte is missing"), "\(missing)")
        // The adapter still names adapters/sql.pte, but files lists (and hashes) it under another name.
        let unlisted = try XCTUnwrap(try openDamagedBundle("bundle_adapters") { dir in
            try FileManager.default.moveItem(at: dir.appendingPathComponent("adapters/sql.pte"),
                                             to: dir.appendingPathComponent("adapters/sql2.pte"))
            let url = dir.appendingPathComponent("manifest.json")
            let text = try String(contentsOf: url, encoding: .utf8)
            XCTAssertTrue(text.contains("\"adapters/sql.pte\": {"))
            try Data(text.replacingOccurrences(of: "\"adapters/sql.pte\": {", with: "\"adapters/sql2.pte\": {").utf8)
                .write(to: url)
        })
        XCTAssertTrue(unlisted is BundleError)
        XCTAssertTrue("\(unlisted)".contains("adapters[sql].program names adapters/sql.pte"), "\(unlisted)")
    }

    func testInvalidAdaptersAreManifestErrors() throws {
        let text = try String(contentsOf: Self.vectors.appendingPathComponent("bundle_adapters/manifest.json"),
                              encoding: .utf8)
        let sql = "\"program\": \"adapters/sql.pte\""
        let damages: [(String, String)] = [
            (sql, "\"program\": \"adapters/../model.pte\""),
            (sql, "\"program\": \"model.pte\""),
            (sql, "\"program\": \"/adapters/sql.pte\""),
            (sql, "\"program\": \"adapters/sql.ptd\""),
            ("\"name\": \"sql\"", "\"name\": \"s q l\""),
            ("\"name\": \"sql\"", "\"name\": \"-sql\""),
            ("\"name\": \"sql\"", "\"name\": \"support\""),
            ("\"rank\": 8", "\"rank\": 0"),
            ("\"scale\": 1.0", "\"scale\": \"1.0\""),
            ("\"weights\": \"model.ptd\"", "\"weights\": null"),
            ("\"adapters\": [", "\"adapters\": null, \"unused\": ["),
        ]
        for (old, new) in damages {
            XCTAssertTrue(text.contains(old), old)
            XCTAssertThrowsError(try Manifest.parse(Data(text.replacingOccurrences(of: old, with: new).utf8)), new) {
                XCTAssertEqual(($0 as? ManifestError)?.kind, "field", new)
            }
        }
        let none = text.replacingOccurrences(of: "\"adapters\": [", with: "\"adapters\": [], \"unused\": [")
            .replacingOccurrences(of: "\"weights\": \"model.ptd\"", with: "\"weights\": null")
        XCTAssertEqual(try Manifest.parse(Data(none.utf8)).adapters, [])
    }

    func testEscapingAdapterProgramIsRefusedBeforeAnyFileIsOpened() throws {
        let error = try XCTUnwrap(try openDamagedBundle("bundle_adapters") { dir in
            let url = dir.appendingPathComponent("manifest.json")
            let text = try String(contentsOf: url, encoding: .utf8)
            try Data(text.replacingOccurrences(of: "\"program\": \"adapters/sql.pte\"",
                                               with: "\"program\": \"adapters/../model.pte\"").utf8).write(to: url)
        })
        XCTAssertEqual((error as? ManifestError)?.kind, "field")
        XCTAssertTrue("\(error)".contains("adapters/../model.pte"), "\(error)")
    }

    func testTokenClock() {
        var now: UInt64 = 0
        let clock = TokenClock(now: { now })
        clock.start()
        XCTAssertNil(clock.timeToFirstTokenMs)
        now = 300_000_000
        clock.token()
        for _ in 1...10 {
            now += 50_000_000
            clock.token()
        }
        XCTAssertEqual(clock.tokens, 11)
        XCTAssertEqual(clock.timeToFirstTokenMs!, 300, accuracy: 1e-9)
        XCTAssertEqual(clock.decodeTokensPerSecond, 20, accuracy: 1e-9)
    }
}
