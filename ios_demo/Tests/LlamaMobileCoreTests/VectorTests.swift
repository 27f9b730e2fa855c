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

    static let iphone = DeviceDescription(os: "ios", osVersion: "18.2", npuBackend: "coreml", chip: "ANE", isa: ["dotprod"],
                                          ramGb: 8)
    static let androidCpu = DeviceDescription(os: "android", osVersion: "14", npuBackend: nil, chip: nil,
                                              isa: ["dotprod", "i8mm"], ramGb: 6)
    static let snapdragon = DeviceDescription(os: "android", osVersion: "14", npuBackend: "qnn", chip: "SM8650",
                                              isa: ["dotprod", "i8mm"], ramGb: 12)
    static let variantsSource = VectorTests.vectors.appendingPathComponent("bundle_variants")

    /// Replaces `old` (which must be there) with `new` in the manifest of the bundle copy `dir`.
    func editManifest(_ dir: URL, _ old: String, _ new: String) throws {
        let url = dir.appendingPathComponent("manifest.json")
        let text = try String(contentsOf: url, encoding: .utf8)
        XCTAssertTrue(text.contains(old), old)
        try Data(text.replacingOccurrences(of: old, with: new).utf8).write(to: url)
    }

    func testBundleWithVariantsOpensAndListsThem() throws {
        let bundle = try VerifiedBundle.open(Self.variantsSource)
        XCTAssertEqual(bundle.manifest.schemaVersion, 2)
        XCTAssertEqual(bundle.variants.map { "\($0.target):\($0.status)" },
                       ["xnnpack:ok", "coreml-ios18:ok", "qnn-htp:skipped"])
        XCTAssertEqual(bundle.variants[1].requires, Requirements(os: "ios", minOs: "18", minRamGb: 1))
        // The first ok variant is the top level: a reader that ignores variants runs it.
        XCTAssertEqual(try bundle.variantProgramPath("xnnpack"), bundle.programPath)
        XCTAssertEqual(try bundle.variantWeightsPath("xnnpack"), bundle.weightsPath)
    }

    func testIosDeviceChoosesCoreMLAndItsProgramResolves() throws {
        let bundle = try VerifiedBundle.open(Self.variantsSource)
        let choice = bundle.chooseVariant(device: Self.iphone)
        XCTAssertEqual(choice.target, "coreml-ios18")
        let program = try bundle.variantProgramPath(try XCTUnwrap(choice.target))
        XCTAssertEqual(program, Self.variantsSource.appendingPathComponent("variants/coreml-ios18/model.pte").path)
        XCTAssertTrue(FileManager.default.fileExists(atPath: program))
        XCTAssertNil(try bundle.variantWeightsPath("coreml-ios18"))  // its program holds its weights
        let ios17 = DeviceDescription(os: "ios", osVersion: "17.4", npuBackend: "coreml", chip: nil, isa: ["dotprod"],
                                      ramGb: 8)
        XCTAssertEqual(bundle.chooseVariant(device: ios17).target, "xnnpack")  // below the variant's min_os
    }

    func testAndroidWithoutNpuChoosesXnnpack() throws {
        let bundle = try VerifiedBundle.open(Self.variantsSource)
        let choice = bundle.chooseVariant(device: Self.androidCpu)
        XCTAssertEqual(choice.target, "xnnpack")
        let dir = Self.variantsSource
        XCTAssertEqual(try bundle.variantProgramPath("xnnpack"), dir.appendingPathComponent("model.pte").path)
        XCTAssertEqual(try bundle.variantWeightsPath("xnnpack"), dir.appendingPathComponent("model.ptd").path)
        XCTAssertTrue(choice.reasons["coreml-ios18"]?.hasPrefix("needs ios") ?? false, "\(choice.reasons)")
    }

    func testSkippedVariantIsNeverChosenNorResolved() throws {
        let bundle = try VerifiedBundle.open(Self.variantsSource)
        for device in [Self.iphone, Self.androidCpu, Self.snapdragon] {
            let choice = bundle.chooseVariant(device: device)
            XCTAssertNotEqual(choice.target, "qnn-htp")
            XCTAssertTrue(choice.reasons["qnn-htp"]?.hasPrefix("skipped at export: target qnn-htp needs") ?? false,
                          "\(choice.reasons)")
        }
        XCTAssertEqual(bundle.chooseVariant(device: Self.snapdragon).target, "xnnpack")
        XCTAssertThrowsError(try bundle.variantProgramPath("qnn-htp")) {
            XCTAssertTrue($0 is BundleError)
            XCTAssertTrue("\($0)".hasPrefix("the bundle has its qnn-htp variant was skipped: target"), "\($0)")
            XCTAssertTrue("\($0)".hasSuffix("use one of: xnnpack, coreml-ios18"), "\($0)")
        }
        XCTAssertThrowsError(try bundle.variantWeightsPath("vulkan")) {
            XCTAssertTrue("\($0)".hasPrefix("the bundle has no vulkan variant"), "\($0)")
        }
    }

    func testTamperedMissingUnlistedOrEscapingVariantFilesAreRefused() throws {
        let program = "variants/coreml-ios18/model.pte"
        let corrupt = try XCTUnwrap(try openDamagedBundle("bundle_variants") { dir in
            let url = dir.appendingPathComponent(program)
            let text = try String(contentsOf: url, encoding: .utf8)
            try Data(text.uppercased().utf8).write(to: url)
        })
        XCTAssertTrue("\(corrupt)".contains("\(program) does not match its SHA-256"), "\(corrupt)")
        let missing = try XCTUnwrap(try openDamagedBundle("bundle_variants") { dir in
            try FileManager.default.removeItem(at: dir.appendingPathComponent(program))
        })
        XCTAssertTrue("\(missing)".contains("\(program) is missing"), "\(missing)")
        // The variant still names its program, but files lists (and hashes) it under another name.
        let unlisted = try XCTUnwrap(try openDamagedBundle("bundle_variants") { dir in
            try FileManager.default.moveItem(at: dir.appendingPathComponent(program),
                                             to: dir.appendingPathComponent("variants/coreml-ios18/copy.pte"))
            try editManifest(dir, "\"\(program)\": {", "\"variants/coreml-ios18/copy.pte\": {")
        })
        XCTAssertTrue(unlisted is BundleError)
        XCTAssertTrue("\(unlisted)".contains("variants[coreml-ios18].program names \(program)"), "\(unlisted)")
        let escaping = try XCTUnwrap(try openDamagedBundle("bundle_variants") { dir in
            try editManifest(dir, "\"program\": \"\(program)\"", "\"program\": \"variants/../model.pte\"")
        })
        XCTAssertTrue(escaping is BundleError)
        XCTAssertTrue("\(escaping)".contains("variants[coreml-ios18].program \"variants/../model.pte\" is not"),
                      "\(escaping)")
    }

    func testVariantsNeedSchemaVersion2AndSchemaVersion2NeedsThem() throws {
        let error = try XCTUnwrap(try openDamagedBundle("bundle_variants") { dir in
            try editManifest(dir, "\"schema_version\": 2,", "\"schema_version\": 1,")
        })
        XCTAssertEqual((error as? ManifestError)?.kind, "field", "\(error)")
        let manifests = Self.vectors.appendingPathComponent("manifests")
        let missing = try Data(contentsOf: manifests.appendingPathComponent("invalid_missing_variants.json"))
        XCTAssertThrowsError(try Manifest.parse(missing)) {
            XCTAssertEqual(($0 as? ManifestError)?.kind, "missing:variants")
        }
        let data = try Data(contentsOf: Self.variantsSource.appendingPathComponent("manifest.json"))
        XCTAssertEqual(try Manifest.parse(data).variants.count, 3)
    }

    func testInvalidVariantsAreManifestErrors() throws {
        let text = try String(contentsOf: Self.variantsSource.appendingPathComponent("manifest.json"), encoding: .utf8)
        let damages: [(String, String)] = [
            ("\"target\": \"coreml-ios18\"", "\"target\": \"xnnpack\""),
            ("\"status\": \"skipped\"", "\"status\": \"failed\""),
            ("\"program\": \"variants/coreml-ios18/model.pte\"", "\"program\": null"),
            ("\"os\": \"ios\"", "\"os\": \"windows\""),
            ("\"min_os\": \"18\"", "\"min_os\": 18"),
            ("\"variants\": [", "\"variants\": [], \"unused\": ["),
            ("\"variants\": [", "\"variants\": null, \"unused\": ["),
        ]
        for (old, new) in damages {
            XCTAssertTrue(text.contains(old), old)
            XCTAssertThrowsError(try Manifest.parse(Data(text.replacingOccurrences(of: old, with: new).utf8)), new) {
                XCTAssertEqual(($0 as? ManifestError)?.kind, "field", new)
            }
        }
    }

    func testSchemaVersion1BundlesStillOpenWithoutVariants() throws {
        for name in ["bundle", "bundle_weights", "bundle_adapters"] {
            let bundle = try VerifiedBundle.open(Self.vectors.appendingPathComponent(name))
            XCTAssertEqual(bundle.manifest.schemaVersion, 1, name)
            XCTAssertEqual(bundle.variants, [], name)
            // No variants: the choice is empty and the app runs programPath.
            XCTAssertEqual(bundle.chooseVariant(device: Self.androidCpu), Choice(target: nil, reasons: [:]), name)
            XCTAssertThrowsError(try bundle.variantProgramPath("xnnpack"), name) {
                XCTAssertTrue("\($0)".hasSuffix("(it has none: open programPath)"), "\($0)")
            }
        }
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
