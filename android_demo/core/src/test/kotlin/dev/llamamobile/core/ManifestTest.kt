package dev.llamamobile.core

import java.io.File
import java.nio.file.Files
import org.junit.Assert.assertEquals
import org.junit.Assert.assertNull
import org.junit.Assert.assertTrue
import org.junit.Assert.fail
import org.junit.Test

class ManifestTest {
    @Test
    fun manifestVectors() {
        for (case in Vectors.cases("manifests/index.json")) {
            val file = case["file"] as String
            val text = File(File(Vectors.dir, "manifests"), file).readText(Charsets.UTF_8)
            if (case["valid"] == true) {
                val m = Manifest.parse(text)
                assertEquals(file, case["task"], m.task)
                assertEquals(file, case["template"], m.promptTemplate.name)
                assertEquals(file, case["bos_id"], m.bosId)
                assertEquals(file, case["eos_ids"], m.eosIds)
                assertEquals(file, case["tokenizer"], m.tokenizerFile)
                assertEquals(file, case["context_length"], m.contextLength)
                assertEquals(file, case["weights"], m.weights)
            } else {
                try {
                    Manifest.parse(text)
                    fail("$file: expected a manifest error")
                } catch (e: ManifestException) {
                    assertEquals(file, case["error"], e.kind)
                }
            }
        }
    }

    @Test
    fun attentionSinkIsReadWhenPresent() {
        val text = File(File(Vectors.dir, "manifests"), "chat_smollm2.json").readText(Charsets.UTF_8)
        assertNull(Manifest.parse(text).attentionSink)  // bundles without one keep their context policy
        val sink = text.replace("\"context_length\": 512,",
            "\"attention_sink\": {\"sink_size\": 4, \"window_size\": 254}, \"context_length\": 512,")
        assertEquals(AttentionSink(4, 254), Manifest.parse(sink).attentionSink)
        try {
            Manifest.parse(sink.replace("\"window_size\": 254", "\"window_size\": \"254\""))
            fail("expected a manifest error")
        } catch (e: ManifestException) {
            assertEquals("field", e.kind)
        }
    }

    @Test
    fun chatTemplateVectors() {
        for (case in Vectors.cases("chat_prompts.json")) {
            val template = ChatTemplate.fromJson(case["template"] as Map<*, *>)
            assertEquals(case["expected"], template.format(case["message"] as String))
        }
    }

    @Test
    fun bundleVectorVerifies() {
        val bundle = Bundle.open(File(Vectors.dir, "bundle"))
        assertEquals("smollm2-135m-instruct", bundle.manifest.preset)
        assertTrue(bundle.programPath.endsWith("model.pte"))
        assertNull(bundle.weightsPath)  // no runtime.weights: the program holds its weights
    }

    @Test
    fun bundleWithExternalWeightsVerifies() {
        val bundle = Bundle.open(File(Vectors.dir, "bundle_weights"))
        assertEquals("model.ptd", bundle.manifest.weights)
        assertEquals(File(File(Vectors.dir, "bundle_weights"), "model.ptd").path, bundle.weightsPath)
        assertTrue(bundle.manifest.files.containsKey("model.ptd"))
    }

    @Test
    fun tamperedOrTruncatedFilesAreRefused() {
        expectBundleError { dir -> File(dir, "model.pte").writeText("not a real ExecuTorch program; bytes for hashing TESTS\n") }
        expectBundleError { dir -> File(dir, "model.pte").writeText("short") }
        expectBundleError { dir -> File(dir, "tokenizer.json").delete() }
    }

    @Test
    fun corruptMissingOrUnlistedWeightsAreRefused() {
        // Same size, different bytes: only the SHA-256 can tell.
        expectBundleError("bundle_weights", "model.ptd does not match its SHA-256") { dir ->
            val file = File(dir, "model.ptd")
            file.writeText(file.readText().toUpperCase())
        }
        expectBundleError("bundle_weights", "model.ptd is missing") { dir -> File(dir, "model.ptd").delete() }
        // runtime.weights still names model.ptd, but files lists (and hashes) it under another name.
        expectBundleError("bundle_weights", "runtime.weights names model.ptd") { dir ->
            File(dir, "model.ptd").copyTo(File(dir, "copy.ptd"))
            val manifest = File(dir, Bundle.MANIFEST_NAME)
            val text = manifest.readText(Charsets.UTF_8)
            assertTrue(text.contains("\"model.ptd\": {"))
            manifest.writeText(text.replace("\"model.ptd\": {", "\"copy.ptd\": {"), Charsets.UTF_8)
        }
    }

    @Test
    fun weightsMustBeAStringOrNull() {
        val text = File(File(Vectors.dir, "bundle_weights"), Bundle.MANIFEST_NAME).readText(Charsets.UTF_8)
        assertNull(Manifest.parse(text.replace("\"weights\": \"model.ptd\"", "\"weights\": null")).weights)
        try {
            Manifest.parse(text.replace("\"weights\": \"model.ptd\"", "\"weights\": 7"))
            fail("numeric runtime.weights accepted")
        } catch (e: ManifestException) {
            assertEquals("field", e.kind)
        }
    }

    private fun expectBundleError(source: String = "bundle", message: String? = null, damage: (File) -> Unit) {
        val dir = Files.createTempDirectory("bundle").toFile()
        try {
            File(Vectors.dir, source).listFiles()!!.forEach { it.copyRecursively(File(dir, it.name)) }
            Bundle.open(dir)  // intact copy passes
            damage(dir)
            try {
                Bundle.open(dir)
                fail("damaged bundle accepted")
            } catch (expected: BundleException) {
                if (message != null) assertTrue("${expected.message}", expected.message!!.startsWith(message))
            }
        } finally {
            dir.deleteRecursively()
        }
    }

    @Test
    fun bundleWithAdaptersVerifiesAndResolvesTheirPrograms() {
        val dir = File(Vectors.dir, "bundle_adapters")
        val bundle = Bundle.open(dir)
        assertEquals(listOf("support", "sql"), bundle.adapterNames)
        assertEquals(Adapter("support", "adapters/support.pte", 16, 2.0, listOf("attention.wq", "attention.wv")),
            bundle.manifest.adapters[0])
        assertEquals(File(File(dir, "adapters"), "sql.pte").path, bundle.adapterProgramPath("sql"))
        assertEquals(File(dir, "model.ptd").path, bundle.weightsPath)  // every adapter reads the base weights
        try {
            bundle.adapterProgramPath("legal")
            fail("unknown adapter accepted")
        } catch (e: BundleException) {
            assertTrue("${e.message}", e.message!!.endsWith("use one of: support, sql"))
        }
    }

    @Test
    fun manifestsWithoutAdaptersHaveNone() {
        for (name in listOf("chat_smollm2.json", "chat_smollm2_weights.json", "guard_llama_guard_3_1b.json")) {
            assertEquals(name, emptyList<Adapter>(), Manifest.parse(File(File(Vectors.dir, "manifests"), name).readText()).adapters)
        }
        val bundle = Bundle.open(File(Vectors.dir, "bundle_weights"))
        assertEquals(emptyList<String>(), bundle.adapterNames)
        try {
            bundle.adapterProgramPath("support")
            fail("adapter of a bundle without adapters accepted")
        } catch (expected: BundleException) {
        }
    }

    @Test
    fun tamperedMissingOrUnlistedAdapterProgramsAreRefused() {
        expectBundleError("bundle_adapters", "adapters/support.pte does not match its SHA-256") { dir ->
            val file = File(dir, "adapters/support.pte")
            file.writeText(file.readText().toUpperCase())
        }
        expectBundleError("bundle_adapters", "adapters/sql.pte is missing") { dir -> File(dir, "adapters/sql.pte").delete() }
        expectBundleError("bundle_adapters", "adapters[sql].program names adapters/sql.pte") { dir ->
            val manifest = File(dir, Bundle.MANIFEST_NAME)
            val text = manifest.readText(Charsets.UTF_8)
            assertTrue(text.contains("\"adapters/sql.pte\": {"))
            manifest.writeText(text.replace("\"adapters/sql.pte\": {", "\"adapters/sql2.pte\": {"), Charsets.UTF_8)
            File(dir, "adapters/sql.pte").renameTo(File(dir, "adapters/sql2.pte"))
        }
    }

    @Test
    fun invalidAdaptersAreManifestErrors() {
        val text = File(File(Vectors.dir, "bundle_adapters"), Bundle.MANIFEST_NAME).readText(Charsets.UTF_8)
        val sql = "\"program\": \"adapters/sql.pte\""
        for ((old, new) in listOf(
            sql to "\"program\": \"adapters/../model.pte\"",
            sql to "\"program\": \"model.pte\"",
            sql to "\"program\": \"/adapters/sql.pte\"",
            sql to "\"program\": \"adapters/sql.ptd\"",
            "\"name\": \"sql\"" to "\"name\": \"s q l\"",
            "\"name\": \"sql\"" to "\"name\": \"-sql\"",
            "\"name\": \"sql\"" to "\"name\": \"support\"",
            "\"rank\": 8" to "\"rank\": 0",
            "\"scale\": 1.0" to "\"scale\": \"1.0\"",
            "\"weights\": \"model.ptd\"" to "\"weights\": null",
            "\"adapters\": [" to "\"adapters\": null, \"unused\": ["
        )) {
            assertTrue(old, text.contains(old))
            try {
                Manifest.parse(text.replace(old, new))
                fail("accepted $new")
            } catch (e: ManifestException) {
                assertEquals(new, "field", e.kind)
            }
        }
        assertEquals(emptyList<Adapter>(), Manifest.parse(text.replace("\"adapters\": [", "\"adapters\": [], \"unused\": [")
            .replace("\"weights\": \"model.ptd\"", "\"weights\": null")).adapters)
    }

    @Test
    fun escapingAdapterProgramIsRefusedBeforeAnyFileIsOpened() {
        val dir = Files.createTempDirectory("bundle").toFile()
        try {
            File(Vectors.dir, "bundle_adapters").listFiles()!!.forEach { it.copyRecursively(File(dir, it.name)) }
            val manifest = File(dir, Bundle.MANIFEST_NAME)
            manifest.writeText(manifest.readText(Charsets.UTF_8)
                .replace("\"program\": \"adapters/sql.pte\"", "\"program\": \"adapters/../model.pte\""), Charsets.UTF_8)
            try {
                Bundle.open(dir)
                fail("escaping adapter program accepted")
            } catch (e: ManifestException) {
                assertTrue("${e.message}", e.message!!.contains("adapters/../model.pte"))
            }
        } finally {
            dir.deleteRecursively()
        }
    }

    @Test
    fun jsonParserHandlesEscapesAndRejectsJunk() {
        val parsed = Json.parse("{\"a\": [1, -2.5e1, true, null, \"\\u00e9\\n\\ud83e\\udd99\"]}") as Map<*, *>
        assertEquals(listOf(1L, -25.0, true, null, "é\n\uD83E\uDD99"), parsed["a"])
        for (bad in listOf("", "{", "[1,]", "{\"a\":1,}", "01", "\"\u0001\"", "{\"a\":1}x", "{\"a\":1,\"a\":2}", "nul")) {
            try {
                Json.parse(bad)
                fail("accepted $bad")
            } catch (expected: JsonException) {
            }
        }
    }
}
