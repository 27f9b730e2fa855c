package dev.llamamobile.core

import java.io.File
import java.io.FileInputStream
import java.security.MessageDigest

/** A bundle folder whose files all match the manifest's sizes and SHA-256 digests. */
class BundleException(message: String) : Exception(message)

data class Bundle(val dir: File, val manifest: Manifest) {
    val programPath: String get() = File(dir, manifest.program).path
    val tokenizerPath: String get() = File(dir, manifest.tokenizerFile).path
    /** ExecuTorch's external weights file (model.ptd), to pass as the data path; null when the program holds them. */
    val weightsPath: String? get() = manifest.weights?.let { File(dir, it).path }
    val adapterNames: List<String> get() = manifest.adapters.map { it.name }

    /** The program of LoRA adapter [name]; open it with [weightsPath] as the data path, like the base program. */
    fun adapterProgramPath(name: String): String {
        val adapter = manifest.adapter(name) ?: throw BundleException("the bundle has no adapter \"$name\"" +
            if (adapterNames.isEmpty()) " (it has none)" else "; use one of: ${adapterNames.joinToString(", ")}")
        return File(dir, adapter.program).path
    }

    /** The manifest's variants (export --targets), in its order; empty in a schema version 1 bundle. */
    val variants: List<Variant> get() = manifest.variants

    /**
     * The variant that runs on [device] ([VariantChooser]'s rules). A schema version 1 bundle has no variants: its
     * choice is Choice(null, no reasons), and the app opens [programPath] with [weightsPath] as before.
     */
    fun chooseVariant(device: DeviceDescription): Choice = VariantChooser.choose(manifest.variants, device)

    /** The program of the ok variant for [target]; open it with [variantWeightsPath] as the data path. */
    fun variantProgramPath(target: String): String = File(dir, okVariant(target).program!!).path

    /** The external weights file of the ok variant for [target]; null when its program holds them. */
    fun variantWeightsPath(target: String): String? = okVariant(target).weights?.let { File(dir, it).path }

    private fun okVariant(target: String): Variant {
        val variant = manifest.variants.firstOrNull { it.target == target }
        if (variant != null && variant.status == "ok") return variant
        val ok = manifest.variants.filter { it.status == "ok" }.map { it.target }
        val why = if (variant != null) "its $target variant was skipped: ${variant.reason ?: "no reason given"}" else "no $target variant"
        throw BundleException("the bundle has $why" + when {
            manifest.variants.isEmpty() -> " (it has none: open programPath)"
            ok.isEmpty() -> ""
            else -> "; use one of: ${ok.joinToString(", ")}"
        })
    }

    companion object {
        const val MANIFEST_NAME = "manifest.json"

        /** Reads and checks everything; throws BundleException or ManifestException naming the first problem. */
        fun open(dir: File): Bundle {
            val manifestFile = File(dir, MANIFEST_NAME)
            if (!manifestFile.isFile) throw BundleException("${dir.path}: manifest.json missing")
            val manifest = Manifest.parse(manifestFile.readText(Charsets.UTF_8))
            // Before hashing: every file the runtime opens must be covered by a digest.
            for (needed in listOf(manifest.program, manifest.tokenizerFile)) {
                if (!manifest.files.containsKey(needed)) throw BundleException("$needed is not listed in the manifest")
            }
            val weights = manifest.weights
            if (weights != null && !manifest.files.containsKey(weights)) {
                throw BundleException("runtime.weights names $weights, which the manifest's files do not list")
            }
            for (adapter in manifest.adapters) {
                if (!manifest.files.containsKey(adapter.program)) {
                    throw BundleException("adapters[${adapter.name}].program names ${adapter.program}, " +
                        "which the manifest's files do not list")
                }
            }
            for (variant in manifest.variants) {
                for ((key, name) in listOf("program" to variant.program, "weights" to variant.weights)) {
                    if (name == null) continue
                    val role = "variants[${variant.target}].$key"
                    if (!inside(name)) throw BundleException("$role \"$name\" is not a file name inside the bundle")
                    if (!manifest.files.containsKey(name)) {
                        throw BundleException("$role names $name, which the manifest's files do not list")
                    }
                }
            }
            for ((name, entry) in manifest.files) {
                if (!inside(name)) throw BundleException("file entry \"$name\" escapes the bundle")
                val file = File(dir, name)
                if (!file.isFile) throw BundleException("$name is missing")
                // Size first: a truncated copy fails without hashing a gigabyte.
                if (file.length() != entry.size) {
                    throw BundleException("$name is ${file.length()} bytes, the manifest says ${entry.size}")
                }
                if (sha256Hex(file) != entry.sha256) throw BundleException("$name does not match its SHA-256 (modified or corrupt)")
            }
            return Bundle(dir, manifest)
        }

        /** A listed file inside the bundle (llama_mobile/core/bundle.py's inside): relative, no '..', no backslash. */
        fun inside(name: String): Boolean = name.isNotEmpty() && !name.startsWith("/") && '\\' !in name &&
            '\u0000' !in name && ".." !in name.split('/')

        fun sha256Hex(file: File): String {
            val digest = MessageDigest.getInstance("SHA-256")
            FileInputStream(file).use { input ->
                val buffer = ByteArray(1 shl 20)
                while (true) {
                    val n = input.read(buffer)
                    if (n < 0) break
                    digest.update(buffer, 0, n)
                }
            }
            return digest.digest().joinToString("") { String.format("%02x", it.toInt() and 0xff) }
        }
    }
}
