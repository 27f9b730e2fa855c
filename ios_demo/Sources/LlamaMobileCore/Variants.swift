import Foundation

// Which of a bundle's variants (one per lowering target) runs on this device: the rules of
// llama_mobile/core/variants.py and Variants.kt, checked by tests/vectors/variant_choice.json.

/// What a variant needs of the device; a nil (or an empty `isa`) states no requirement.
public struct Requirements: Equatable {
    public let os: String?
    public let minOs: String?
    public let npuBackend: String?
    public let chip: String?
    public let isa: [String]
    public let minRamGb: Double?

    public init(os: String? = nil, minOs: String? = nil, npuBackend: String? = nil, chip: String? = nil,
                isa: [String] = [], minRamGb: Double? = nil) {
        self.os = os
        self.minOs = minOs
        self.npuBackend = npuBackend
        self.chip = chip
        self.isa = isa
        self.minRamGb = minRamGb
    }
}

/// One entry of the manifest's "variants" list; `status` is "ok" or "skipped" (then `reason` says why).
public struct Variant: Equatable {
    public let target: String
    public let backend: String
    public let status: String
    public let reason: String?
    public let requires: Requirements
    public let program: String?
    public let weights: String?

    public init(target: String, backend: String, status: String, reason: String?, requires: Requirements,
                program: String?, weights: String?) {
        self.target = target
        self.backend = backend
        self.status = status
        self.reason = reason
        self.requires = requires
        self.program = program
        self.weights = weights
    }

    public init(json: JSONValue) throws {
        guard case .object = json else { throw JSONParseError.message("a variant must be an object") }
        let target = try json.text("target")
        let needs = json["requires"] ?? .null
        switch needs {
        case .null, .object: break
        default: throw JSONParseError.message("variants[\(target)].requires must be an object")
        }
        let minOs = try needs.optionalText("min_os")
        if let minOs { try checkVersion(minOs) }
        let requires = Requirements(os: try needs.optionalText("os"), minOs: minOs,
                                    npuBackend: try needs.optionalText("npu_backend"), chip: try needs.optionalText("chip"),
                                    isa: try needs.texts("isa"), minRamGb: try needs.optionalNumber("min_ram_gb"))
        self.init(target: target, backend: try json.text("backend"), status: try json.text("status"),
                  reason: try json.optionalText("reason"), requires: requires,
                  program: try json.optionalText("program"), weights: try json.optionalText("weights"))
    }

    /// The manifest's "variants" list, in its order (ties go to the one listed first).
    public static func list(from json: JSONValue) throws -> [Variant] {
        guard case .array(let items) = json else { throw JSONParseError.message("variants must be an array") }
        return try items.map(Variant.init(json:))
    }
}

/// The device the app runs on; `osVersion` is dotted ("17.4", "14"), `os` "android" or "ios".
public struct DeviceDescription: Equatable {
    public let os: String
    public let osVersion: String
    public let npuBackend: String?
    public let chip: String?
    public let isa: [String]
    public let ramGb: Double

    public init(os: String, osVersion: String, npuBackend: String?, chip: String?, isa: [String], ramGb: Double) {
        self.os = os
        self.osVersion = osVersion
        self.npuBackend = npuBackend
        self.chip = chip
        self.isa = isa
        self.ramGb = ramGb
    }

    public init(json: JSONValue) throws {
        guard case .object = json else { throw JSONParseError.message("a device must be an object") }
        let version = try json.text("os_version")
        try checkVersion(version)
        guard let ram = try json.optionalNumber("ram_gb") else { throw JSONParseError.message("\"ram_gb\" must be a number") }
        self.init(os: try json.text("os"), osVersion: version, npuBackend: try json.optionalText("npu_backend"),
                  chip: try json.optionalText("chip"), isa: try json.texts("isa"), ramGb: ram)
    }
}

/// The chosen variant's target, nil when none runs here; `reasons` says why each other one does not.
public struct Choice: Equatable {
    public let target: String?
    public let reasons: [String: String]
}

/// The first variant of the best rank among those the device meets every requirement of: an NPU one (QNN,
/// NeuroPilot) before Core ML, before XNNPACK, before any other backend.
public enum VariantChooser {
    public static let ranks = ["qnn": 0, "neuropilot": 0, "coreml": 1, "xnnpack": 2]
    public static let otherRank = 3

    public static func rank(_ backend: String) -> Int { ranks[backend] ?? otherRank }

    /// "17.4" -> [17, 4]; nil for anything but dot-separated digits ("18-beta", "18.").
    public static func versionParts(_ version: String) -> [Int]? {
        var parts: [Int] = []
        for part in version.split(separator: ".", omittingEmptySubsequences: false) {
            guard part.unicodeScalars.allSatisfy({ ("0"..."9").contains($0) }), let n = Int(part) else { return nil }
            parts.append(n)
        }
        return parts
    }

    /// -1, 0 or 1 as `a` is below, equal to or above `b`, part by part with missing parts 0 ("18" == "18.0");
    /// nil when either is not a dotted version.
    public static func compareVersions(_ a: String, _ b: String) -> Int? {
        guard let x = versionParts(a), let y = versionParts(b) else { return nil }
        for i in 0..<max(x.count, y.count) {
            let p = i < x.count ? x[i] : 0
            let q = i < y.count ? y[i] : 0
            if p != q { return p < q ? -1 : 1 }
        }
        return 0
    }

    /// Why `variant` cannot run on `device`; nil when it can.
    public static func whyNot(_ variant: Variant, device: DeviceDescription) -> String? {
        guard variant.status == "ok" else { return "skipped at export: \(variant.reason ?? "no reason given")" }
        let r = variant.requires
        let missing = r.isa.filter { !device.isa.contains($0) }
        if let os = r.os, os != device.os { return "needs \(os), the device runs \(device.os)" }
        if let minOs = r.minOs, (compareVersions(device.osVersion, minOs) ?? -1) < 0 {
            return "needs \(r.os ?? "OS") \(minOs), the device has \(device.osVersion)"
        }
        if let npu = r.npuBackend, npu != device.npuBackend { return "needs a \(npu) NPU" }
        if let chip = r.chip, chip != device.chip { return "compiled for \(chip), the device has \(device.chip ?? "none")" }
        if !missing.isEmpty { return "needs CPU features \(missing.joined(separator: ", "))" }
        if let ram = r.minRamGb, device.ramGb < ram { return "needs \(ram) GB of RAM, the device has \(device.ramGb)" }
        return nil
    }

    public static func choose(_ variants: [Variant], device: DeviceDescription) -> Choice {
        var reasons: [String: String] = [:]
        var best: Variant?
        for variant in variants {
            if let reason = whyNot(variant, device: device) {
                reasons[variant.target] = reason
            } else if let current = best, rank(variant.backend) >= rank(current.backend) {
                continue
            } else {
                best = variant
            }
        }
        return Choice(target: best?.target, reasons: reasons)
    }
}

private func checkVersion(_ version: String) throws {
    guard VariantChooser.versionParts(version) != nil else {
        throw JSONParseError.message("\"\(version)\" is not a dotted version")
    }
}

private extension JSONValue {
    func text(_ key: String) throws -> String {
        guard case .string(let s)? = self[key] else { throw JSONParseError.message("\"\(key)\" must be a string") }
        return s
    }

    func optionalText(_ key: String) throws -> String? {
        switch self[key] {
        case nil, .null?: return nil
        case .string(let s)?: return s
        default: throw JSONParseError.message("\"\(key)\" must be a string or null")
        }
    }

    func optionalNumber(_ key: String) throws -> Double? {
        switch self[key] {
        case nil, .null?: return nil
        case .int(let n)?: return Double(n)
        case .double(let d)?: return d
        default: throw JSONParseError.message("\"\(key)\" must be a number or null")
        }
    }

    func texts(_ key: String) throws -> [String] {
        switch self[key] {
        case nil, .null?: return []
        case .array(let items)?:
            return try items.map { item -> String in
                guard case .string(let s) = item else { throw JSONParseError.message("\"\(key)\" must hold strings") }
                return s
            }
        default: throw JSONParseError.message("\"\(key)\" must be an array")
        }
    }
}
