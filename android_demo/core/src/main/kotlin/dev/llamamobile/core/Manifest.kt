package dev.llamamobile.core

/**
 * The parts of manifest.json (schema llama_mobile/core/schema/manifest.schema.json) an app needs.
 * Like the Python reader, it refuses a format or schema_version it does not know. Schema version 2 (export --targets)
 * adds a required "variants" list, which version 1 may not have.
 */
class ManifestException(val kind: String, message: String) : Exception(message)

data class FileEntry(val size: Long, val sha256: String)

/**
 * runtime.attention_sink (export --attention-sink SINK,WINDOW): the program keeps the first [sinkSize] positions and a
 * ring of 2 x [windowSize] after them, and takes any position. A conversation on it has no end of context:
 * [ChatSession.nextPrompt] skips the drop-oldest policy (slidingWindow = true). Absent in other bundles.
 */
data class AttentionSink(val sinkSize: Long, val windowSize: Long)

/**
 * A LoRA adapter (export --adapter NAME=PATH): its own small program under adapters/ that reads the same external
 * weights file as the base program. Switching adapters opens a module on [program] with the bundle's weightsPath.
 */
data class Adapter(val name: String, val program: String, val rank: Long, val scale: Double, val targets: List<String>)

data class Manifest(
    val schemaVersion: Long,
    val preset: String,
    val task: String,  // "chat" or "guard"
    val program: String,
    val weights: String?,  // runtime.weights: ExecuTorch external weights file (.ptd), null when the program holds them
    val contextLength: Long,
    val maxSeqLen: Long,
    val tokenizerFile: String,
    val tokenizerKind: String,
    val bosId: Long,
    val eosIds: List<Long>,
    val promptTemplate: ChatTemplate,
    val files: Map<String, FileEntry>,
    val attentionSink: AttentionSink? = null,
    val adapters: List<Adapter> = emptyList(),
    /** export --targets (schema version 2): one per target, the top level being the first ok one's; empty in v1. */
    val variants: List<Variant> = emptyList()
) {
    fun adapter(name: String): Adapter? = adapters.firstOrNull { it.name == name }

    companion object {
        const val FORMAT = "llama-mobile-bundle"
        val SUPPORTED_SCHEMA_VERSIONS = listOf(1L, 2L)
        const val VARIANTS_SCHEMA_VERSION = 2L
        val VARIANT_STATUSES = listOf("ok", "skipped")
        val VARIANT_OSES = listOf("android", "ios")
        val REQUIRED = listOf("format", "schema_version", "tool", "model", "recipe", "target", "runtime", "tokenizer",
            "special_tokens", "prompt_template", "files")
        private val SHA256_HEX = Regex("[0-9a-f]{64}")
        val ADAPTER_NAME = Regex("[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
        val ADAPTER_PROGRAM = Regex("adapters/[A-Za-z0-9][A-Za-z0-9_-]{0,63}[.]pte")

        fun parse(text: String): Manifest {
            val root = try {
                Json.parse(text) as? Map<*, *>
            } catch (e: JsonException) {
                throw ManifestException("json", "manifest is not valid JSON: ${e.message}")
            } ?: throw ManifestException("json", "manifest is not a JSON object")
            if (root["format"] != FORMAT) throw ManifestException("format", "not a llama-mobile manifest")
            val version = root["schema_version"]
            if (version !is Long || version !in SUPPORTED_SCHEMA_VERSIONS) {
                throw ManifestException("schema_version",
                    "manifest schema version $version is not supported (this app reads $SUPPORTED_SCHEMA_VERSIONS)")
            }
            for (key in REQUIRED) {
                if (!root.containsKey(key)) throw ManifestException("missing:$key", "manifest lacks \"$key\"")
            }
            if (version == VARIANTS_SCHEMA_VERSION && !root.containsKey("variants")) {
                throw ManifestException("missing:variants", "a schema version 2 manifest lacks \"variants\"")
            }
            if (version != VARIANTS_SCHEMA_VERSION && root.containsKey("variants")) {
                throw ManifestException("field", "\"variants\" needs schema version 2, not $version")
            }
            try {
                return fromJson(root, version)
            } catch (e: JsonException) {
                throw ManifestException("field", "manifest field: ${e.message}")
            }
        }

        private fun fromJson(root: Map<*, *>, version: Long): Manifest {
            val model = root.obj("model")
            val task = model.str("task")
            if (task != "chat" && task != "guard") throw JsonException("model.task must be chat or guard")
            val runtime = root.obj("runtime")
            val weights = runtime["weights"]
            if (weights != null && weights !is String) throw JsonException("runtime.weights must be a string or null")
            val sink = runtime["attention_sink"]?.let {
                val o = it as? Map<*, *> ?: throw JsonException("runtime.attention_sink must be an object")
                AttentionSink(o.long("sink_size"), o.long("window_size")).also { s ->
                    if (s.sinkSize < 1 || s.windowSize < 16) throw JsonException("runtime.attention_sink is out of range")
                }
            }
            val tokenizer = root.obj("tokenizer")
            val specials = root.obj("special_tokens")
            val eos = specials.list("eos_ids").map { it as? Long ?: throw JsonException("eos_ids must be integers") }
            if (eos.isEmpty()) throw JsonException("eos_ids must not be empty")
            val files = LinkedHashMap<String, FileEntry>()
            for ((name, value) in root.obj("files")) {
                val entry = value as? Map<*, *> ?: throw JsonException("files[$name] must be an object")
                val sha = entry.str("sha256")
                if (!SHA256_HEX.matches(sha)) throw JsonException("files[$name].sha256 must be 64 lowercase hex digits")
                val size = entry.long("size")
                if (size < 0) throw JsonException("files[$name].size must not be negative")
                files[name as String] = FileEntry(size, sha)
            }
            if (files.size < 2) throw JsonException("files must list the program and the tokenizer")
            return Manifest(
                schemaVersion = version,
                preset = model.str("preset"),
                task = task,
                program = runtime.str("program"),
                weights = weights as String?,
                contextLength = runtime.long("context_length"),
                maxSeqLen = runtime.long("max_seq_len"),
                tokenizerFile = tokenizer.str("file"),
                tokenizerKind = tokenizer.str("kind"),
                bosId = specials.long("bos_id"),
                eosIds = eos,
                promptTemplate = ChatTemplate.fromJson(root.obj("prompt_template")),
                files = files,
                attentionSink = sink,
                adapters = adapters(root, weights as String?),
                variants = if (root.containsKey("variants")) variants(root["variants"]) else emptyList()
            )
        }

        /** The "variants" list (schema version 2): two or more, each target once; an ok one names its program. */
        private fun variants(json: Any?): List<Variant> {
            val variants = Variant.listFromJson(json)
            if (variants.size < 2) throw JsonException("variants must list at least 2 targets")
            val seen = HashSet<String>()
            for (variant in variants) {
                val target = variant.target
                if (!seen.add(target)) throw JsonException("variant \"$target\" is listed twice")
                val os = variant.requires.os
                val problem = when {
                    variant.status !in VARIANT_STATUSES -> "status must be ok or skipped"
                    variant.status == "ok" && variant.program == null -> "program is null in an ok variant"
                    os != null && os !in VARIANT_OSES -> "requires.os must be android, ios or null"
                    else -> null
                }
                if (problem != null) throw JsonException("variants[$target].$problem")
            }
            return variants
        }

        /** The "adapters" list (absent in bundles without adapters); each reads runtime.weights, so that must exist. */
        private fun adapters(root: Map<*, *>, weights: String?): List<Adapter> {
            if (!root.containsKey("adapters")) return emptyList()
            val adapters = root.list("adapters").mapIndexed { i, value ->
                val o = value as? Map<*, *> ?: throw JsonException("adapters[$i] must be an object")
                val name = o.str("name")
                if (!ADAPTER_NAME.matches(name)) {
                    throw JsonException("adapter name \"$name\" must be 1-64 letters, digits, '-' or '_'")
                }
                val program = o.str("program")
                if (!ADAPTER_PROGRAM.matches(program)) {
                    throw JsonException("adapters[$name].program \"$program\" must be adapters/<name>.pte")
                }
                val rank = o.long("rank")
                if (rank < 1) throw JsonException("adapters[$name].rank must be at least 1")
                val scale = o["scale"] as? Number ?: throw JsonException("adapters[$name].scale must be a number")
                val targets = o.list("targets").map {
                    it as? String ?: throw JsonException("adapters[$name].targets must be strings")
                }
                Adapter(name, program, rank, scale.toDouble(), targets)
            }
            val seen = HashSet<String>()
            for (adapter in adapters) {
                if (!seen.add(adapter.name)) throw JsonException("adapter name \"${adapter.name}\" is listed twice")
            }
            if (adapters.isNotEmpty() && weights == null) {
                throw JsonException("the manifest lists adapters but no base weights file (runtime.weights)")
            }
            return adapters
        }
    }
}
