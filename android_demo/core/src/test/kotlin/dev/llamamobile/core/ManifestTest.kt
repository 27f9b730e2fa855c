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
        expectFieldErrors(text, listOf(
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
        ))
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

    private val variantsDir = File(Vectors.dir, "bundle_variants")
    private val iphone = DeviceDescription("ios", "18.2", "coreml", "Apple Neural Engine", listOf("dotprod"), 8.0)
    private val androidCpu = DeviceDescription("android", "14", null, null, listOf("dotprod", "i8mm"), 6.0)
    private val snapdragon = DeviceDescription("android", "14", "qnn", "SM8650", listOf("dotprod", "i8mm"), 12.0)

    @Test
    fun bundleWithVariantsOpensAndListsThem() {
        val bundle = Bundle.open(variantsDir)
        assertEquals(2L, bundle.manifest.schemaVersion)
        assertEquals(listOf("xnnpack" to "ok", "coreml-ios18" to "ok", "qnn-htp" to "skipped"),
            bundle.variants.map { it.target to it.status })
        assertEquals(Requirements(os = "ios", minOs = "18", minRamGb = 1.0), bundle.variants[1].requires)
        // The first ok variant is the top level: a reader that ignores variants runs it.
        assertEquals(bundle.programPath, bundle.variantProgramPath("xnnpack"))
        assertEquals(bundle.weightsPath, bundle.variantWeightsPath("xnnpack"))
    }

    @Test
    fun iosDeviceChoosesCoreMLAndItsProgramResolves() {
        val bundle = Bundle.open(variantsDir)
        val choice = bundle.chooseVariant(iphone)
        assertEquals("coreml-ios18", choice.target)
        val program = bundle.variantProgramPath(choice.target!!)
        assertEquals(File(variantsDir, "variants/coreml-ios18/model.pte").path, program)
        assertTrue(File(program).isFile)
        assertNull(bundle.variantWeightsPath("coreml-ios18"))  // its program holds its weights
        val ios17 = DeviceDescription("ios", "17.4", "coreml", null, listOf("dotprod"), 8.0)
        assertEquals("xnnpack", bundle.chooseVariant(ios17).target)  // below the variant's min_os
    }

    @Test
    fun androidWithoutNpuChoosesXnnpack() {
        val bundle = Bundle.open(variantsDir)
        val choice = bundle.chooseVariant(androidCpu)
        assertEquals("xnnpack", choice.target)
        assertEquals(File(variantsDir, "model.pte").path, bundle.variantProgramPath("xnnpack"))
        assertEquals(File(variantsDir, "model.ptd").path, bundle.variantWeightsPath("xnnpack"))
        assertTrue(choice.reasons["coreml-ios18"]!!.startsWith("needs ios"))
    }

    @Test
    fun skippedVariantIsNeverChosenNorResolved() {
        val bundle = Bundle.open(variantsDir)
        for (device in listOf(iphone, androidCpu, snapdragon)) {
            val choice = bundle.chooseVariant(device)
            assertTrue("$device", choice.target != "qnn-htp")
            assertTrue("$device", choice.reasons["qnn-htp"]!!.startsWith("skipped at export: target qnn-htp needs"))
        }
        assertEquals("xnnpack", bundle.chooseVariant(snapdragon).target)
        try {
            bundle.variantProgramPath("qnn-htp")
            fail("skipped variant resolved")
        } catch (e: BundleException) {
            assertTrue("${e.message}", e.message!!.startsWith("the bundle has its qnn-htp variant was skipped: target"))
            assertTrue("${e.message}", e.message!!.endsWith("use one of: xnnpack, coreml-ios18"))
        }
        try {
            bundle.variantWeightsPath("vulkan")
            fail("unknown variant resolved")
        } catch (e: BundleException) {
            assertTrue("${e.message}", e.message!!.startsWith("the bundle has no vulkan variant"))
        }
    }

    @Test
    fun tamperedMissingUnlistedOrEscapingVariantFilesAreRefused() {
        val program = "variants/coreml-ios18/model.pte"
        expectBundleError("bundle_variants", "$program does not match its SHA-256") { dir ->
            val file = File(dir, program)
            file.writeText(file.readText().toUpperCase())
        }
        expectBundleError("bundle_variants", "$program is missing") { dir -> File(dir, program).delete() }
        expectBundleError("bundle_variants", "variants[coreml-ios18].program names $program") { dir ->
            editManifest(dir, "\"$program\": {", "\"variants/coreml-ios18/copy.pte\": {")
            File(dir, program).renameTo(File(dir, "variants/coreml-ios18/copy.pte"))
        }
        expectBundleError("bundle_variants", "variants[coreml-ios18].program \"variants/../model.pte\" is not") { dir ->
            editManifest(dir, "\"program\": \"$program\"", "\"program\": \"variants/../model.pte\"")
        }
    }

    @Test
    fun variantsNeedSchemaVersion2AndSchemaVersion2NeedsThem() {
        val dir = Files.createTempDirectory("bundle").toFile()
        try {
            variantsDir.listFiles()!!.forEach { it.copyRecursively(File(dir, it.name)) }
            editManifest(dir, "\"schema_version\": 2,", "\"schema_version\": 1,")
            try {
                Bundle.open(dir)
                fail("schema version 1 with variants accepted")
            } catch (e: ManifestException) {
                assertEquals("field", e.kind)
            }
        } finally {
            dir.deleteRecursively()
        }
        val text = File(variantsDir, Bundle.MANIFEST_NAME).readText(Charsets.UTF_8)
        val missing = File(File(Vectors.dir, "manifests"), "invalid_missing_variants.json").readText(Charsets.UTF_8)
        try {
            Manifest.parse(missing)
            fail("schema version 2 without variants accepted")
        } catch (e: ManifestException) {
            assertEquals("missing:variants", e.kind)
        }
        assertEquals(3, Manifest.parse(text).variants.size)
    }

    @Test
    fun invalidVariantsAreManifestErrors() {
        val text = File(variantsDir, Bundle.MANIFEST_NAME).readText(Charsets.UTF_8)
        expectFieldErrors(text, listOf(
            "\"target\": \"coreml-ios18\"" to "\"target\": \"xnnpack\"",
            "\"status\": \"skipped\"" to "\"status\": \"failed\"",
            "\"program\": \"variants/coreml-ios18/model.pte\"" to "\"program\": null",
            "\"os\": \"ios\"" to "\"os\": \"windows\"",
            "\"min_os\": \"18\"" to "\"min_os\": 18",
            "\"variants\": [" to "\"variants\": [], \"unused\": [",
            "\"variants\": [" to "\"variants\": null, \"unused\": ["
        ))
    }

    @Test
    fun schemaVersion1BundlesStillOpenWithoutVariants() {
        for (name in listOf("bundle", "bundle_weights", "bundle_adapters")) {
            val bundle = Bundle.open(File(Vectors.dir, name))
            assertEquals(name, 1L, bundle.manifest.schemaVersion)
            assertEquals(name, emptyList<Variant>(), bundle.variants)
            assertEquals(name, Choice(null, emptyMap()), bundle.chooseVariant(androidCpu))  // run programPath
            try {
                bundle.variantProgramPath("xnnpack")
                fail("$name: variant of a bundle without variants resolved")
            } catch (e: BundleException) {
                assertTrue("${e.message}", e.message!!.endsWith("(it has none: open programPath)"))
            }
        }
    }

    private fun editManifest(dir: File, old: String, new: String) {
        val manifest = File(dir, Bundle.MANIFEST_NAME)
        val text = manifest.readText(Charsets.UTF_8)
        assertTrue(old, text.contains(old))
        manifest.writeText(text.replace(old, new), Charsets.UTF_8)
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

    /** Each edit (old text -> new text) of [text] must make the manifest a "field" error. */
    private fun expectFieldErrors(text: String, edits: List<Pair<String, String>>) {
        for ((old, new) in edits) {
            assertTrue(old, text.contains(old))
            try {
                Manifest.parse(text.replace(old, new))
                fail("accepted $new")
            } catch (e: ManifestException) {
                assertEquals(new, "field", e.kind)
            }
        }
    }
}
