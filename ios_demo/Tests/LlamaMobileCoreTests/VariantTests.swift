import Foundation
import XCTest
@testable import LlamaMobileCore

/// tests/vectors/variant_choice.json: the same checks as VariantsTest.kt (and the Python chooser).
final class VariantTests: XCTestCase {
    func read(_ name: String) throws -> JSONValue {
        let data = try Data(contentsOf: VectorTests.vectors.appendingPathComponent(name))
        return try JSONValue.parse(String(decoding: data, as: UTF8.self))
    }

    func testVariantChoiceVectors() throws {
        let vectors = try read("variant_choice.json")
        let shared = try Variant.list(from: vectors["variants"] ?? .null)
        guard case .array(let cases)? = vectors["cases"] else { return XCTFail("variant_choice.json has no cases") }
        XCTAssertGreaterThanOrEqual(cases.count, 14)
        for c in cases {
            guard case .string(let name)? = c["name"] else { return XCTFail("a case has no name") }
            let variants = try c["variants"].map { try Variant.list(from: $0) } ?? shared
            let choice = VariantChooser.choose(variants, device: try DeviceDescription(json: c["device"] ?? .null))
            var expected: String? = nil
            if case .string(let target)? = c["expected"] { expected = target }
            XCTAssertEqual(choice.target, expected, name)
            if let target = choice.target {
                XCTAssertNil(choice.reasons[target], name)
            } else {
                XCTAssertEqual(Set(choice.reasons.keys), Set(variants.map { $0.target }), name)
            }
        }
    }

    func testVersionsCompareNumericallyPartByPart() {
        let compare = VariantChooser.compareVersions
        XCTAssertEqual(compare("18", "18.0"), 0)
        XCTAssertEqual(compare("18.0.0", "18"), 0)
        XCTAssertEqual(compare("17.4", "18"), -1)
        XCTAssertEqual(compare("18.1", "18"), 1)
        XCTAssertEqual(compare("17.10", "17.9"), 1)
        XCTAssertEqual(compare("9", "10"), -1)
        for bad in ["", "18.", "18-beta", "v18", "+18"] {
            XCTAssertNil(VariantChooser.versionParts(bad), bad)
            XCTAssertNil(compare(bad, "18"), bad)
        }
        let device = try? JSONValue.parse("{\"os\": \"ios\", \"os_version\": \"18-beta\", \"isa\": [], \"ram_gb\": 8}")
        XCTAssertThrowsError(try DeviceDescription(json: device ?? .null))
    }

    func testSkippedVariantsAreExplained() throws {
        let variants = try Variant.list(from: try read("variant_choice.json")["variants"] ?? .null)
        let device = DeviceDescription(os: "android", osVersion: "14", npuBackend: "qnn", chip: "SM8750",
                                       isa: ["dotprod"], ramGb: 12)
        let choice = VariantChooser.choose(variants, device: device)
        XCTAssertEqual(choice.target, "xnnpack")
        XCTAssertTrue(choice.reasons["qnn-htp-sm8750"]?.hasPrefix("skipped at export: the QNN SDK") ?? false)
        XCTAssertNil(variants.first?.program)
    }
}
