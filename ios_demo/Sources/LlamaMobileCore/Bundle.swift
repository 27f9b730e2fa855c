import Foundation
#if canImport(CryptoKit)
import CryptoKit
#else
import Crypto
#endif

public struct BundleError: Error, CustomStringConvertible {
    public let description: String
}

/// A bundle folder whose files all match the manifest's sizes and SHA-256 digests.
public struct VerifiedBundle {
    public let directory: URL
    public let manifest: Manifest

    public var programPath: String { directory.appendingPathComponent(manifest.runtime.program).path }
    public var tokenizerPath: String { directory.appendingPathComponent(manifest.tokenizer.file).path }
    /// ExecuTorch's external weights file (model.ptd), the runtime's data path; nil when the program holds them.
    public var weightsPath: String? { manifest.runtime.weights.map { directory.appendingPathComponent($0).path } }
    public var adapterNames: [String] { manifest.adapters.map { $0.name } }

    /// The program of LoRA adapter `name`; open it with `weightsPath` as the data path, like the base program.
    public func adapterProgramPath(_ name: String) throws -> String {
        guard let adapter = manifest.adapter(name) else {
            let names = adapterNames
            throw BundleError(description: "the bundle has no adapter \"\(name)\""
                + (names.isEmpty ? " (it has none)" : "; use one of: \(names.joined(separator: ", "))"))
        }
        return directory.appendingPathComponent(adapter.program).path
    }

    /// The manifest's variants (export --targets), in its order; empty in a schema version 1 bundle.
    public var variants: [Variant] { manifest.variants }

    /// The variant that runs on `device` (VariantChooser's rules). A schema version 1 bundle has no variants:
    /// its choice is Choice(target: nil, reasons: [:]), and the app opens `programPath` with `weightsPath` as before.
    public func chooseVariant(device: DeviceDescription) -> Choice {
        VariantChooser.choose(manifest.variants, device: device)
    }

    /// The program of the ok variant for `target`; open it with `variantWeightsPath` as the data path.
    public func variantProgramPath(_ target: String) throws -> String {
        let program = try okVariant(target).program!  // Manifest.check: an ok variant names its program
        return directory.appendingPathComponent(program).path
    }

    /// The external weights file of the ok variant for `target`; nil when its program holds them.
    public func variantWeightsPath(_ target: String) throws -> String? {
        try okVariant(target).weights.map { directory.appendingPathComponent($0).path }
    }

    func okVariant(_ target: String) throws -> Variant {
        let variant = variants.first { $0.target == target }
        if let variant, variant.status == "ok" { return variant }
        let ok = variants.filter { $0.status == "ok" }.map { $0.target }
        let why = variant.map { "its \(target) variant was skipped: \($0.reason ?? "no reason given")" }
            ?? "no \(target) variant"
        let hint = variants.isEmpty ? " (it has none: open programPath)"
            : ok.isEmpty ? "" : "; use one of: \(ok.joined(separator: ", "))"
        throw BundleError(description: "the bundle has \(why)\(hint)")
    }

    /// Reads and checks everything; throws BundleError or ManifestError naming the first problem.
    public static func open(_ directory: URL) throws -> VerifiedBundle {
        let manifestURL = directory.appendingPathComponent("manifest.json")
        guard let data = try? Data(contentsOf: manifestURL) else {
            throw BundleError(description: "\(directory.path): manifest.json missing")
        }
        let manifest = try Manifest.parse(data)
        // Before hashing: every file the runtime opens must be covered by a digest.
        for needed in [manifest.runtime.program, manifest.tokenizer.file] where manifest.files[needed] == nil {
            throw BundleError(description: "\(needed) is not listed in the manifest")
        }
        if let weights = manifest.runtime.weights, manifest.files[weights] == nil {
            throw BundleError(description: "runtime.weights names \(weights), which the manifest's files do not list")
        }
        for adapter in manifest.adapters where manifest.files[adapter.program] == nil {
            throw BundleError(description: "adapters[\(adapter.name)].program names \(adapter.program), "
                + "which the manifest's files do not list")
        }
        for variant in manifest.variants {
            for (key, file) in [("program", variant.program), ("weights", variant.weights)] {
                guard let name = file else { continue }
                let role = "variants[\(variant.target)].\(key)"
                guard inside(name) else {
                    throw BundleError(description: "\(role) \"\(name)\" is not a file name inside the bundle")
                }
                guard manifest.files[name] != nil else {
                    throw BundleError(description: "\(role) names \(name), which the manifest's files do not list")
                }
            }
        }
        for name in manifest.files.keys.sorted() {
            let entry = manifest.files[name]!
            guard inside(name) else { throw BundleError(description: "file entry \"\(name)\" escapes the bundle") }
            let url = directory.appendingPathComponent(name)
            guard let attributes = try? FileManager.default.attributesOfItem(atPath: url.path),
                  let size = (attributes[.size] as? NSNumber)?.int64Value else {
                throw BundleError(description: "\(name) is missing")
            }
            // Size first: a truncated copy fails without hashing a gigabyte.
            guard size == entry.size else {
                throw BundleError(description: "\(name) is \(size) bytes, the manifest says \(entry.size)")
            }
            guard try sha256Hex(url) == entry.sha256 else {
                throw BundleError(description: "\(name) does not match its SHA-256 (modified or corrupt)")
            }
        }
        return VerifiedBundle(directory: directory, manifest: manifest)
    }

    /// A listed file inside the bundle (llama_mobile/core/bundle.py's inside): relative, no '..', no backslash.
    public static func inside(_ name: String) -> Bool {
        !name.isEmpty && !name.hasPrefix("/") && !name.unicodeScalars.contains { $0 == "\\" || $0 == "\0" }
            && !name.split(separator: "/", omittingEmptySubsequences: false).contains("..")
    }

    public static func sha256Hex(_ url: URL) throws -> String {
        let handle = try FileHandle(forReadingFrom: url)
        defer { try? handle.close() }
        var hasher = SHA256()
        while let chunk = try handle.read(upToCount: 1 << 20), !chunk.isEmpty {
            hasher.update(data: chunk)
        }
        return hasher.finalize().map { String(format: "%02x", $0) }.joined()
    }
}
