package dev.llamamobile.core

/**
 * The parts of manifest.json (schema llama_mobile/core/schema/manifest.schema.json) an app needs.
 * Like the Python reader, it refuses a format or schema_version it does not know.
 */
class ManifestException(val kind: String, message: String) : Exception(message)

data class FileEntry(val size: Long, val sha256: String)

/**
 * runtime.attention_sink (export --attention-sink SINK,WINDOW): the program keeps the first [sinkSize] positions and a
 * ring of 2 x [windowSize] after them, and takes any position. A conversation on it has no end of context:
 * [ChatSession.nextPrompt] skips the drop-oldest policy (slidingWindow = true). Absent in other bundles.
 */
data class AttentionSink(val sinkSize: Long, val windowSize: Long)

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
    val attentionSink: AttentionSink? = null
) {
    companion object {
        const val FORMAT = "llama-mobile-bundle"
        val SUPPORTED_SCHEMA_VERSIONS = listOf(1L)
        val REQUIRED = listOf("format", "schema_version", "tool", "model", "recipe", "target", "runtime", "tokenizer",
            "special_tokens", "prompt_template", "files")
        private val SHA256_HEX = Regex("[0-9a-f]{64}")

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
                attentionSink = sink
            )
        }
    }
}
