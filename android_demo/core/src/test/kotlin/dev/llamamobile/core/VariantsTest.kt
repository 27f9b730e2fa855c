package dev.llamamobile.core

import org.junit.Assert.assertEquals
import org.junit.Assert.assertFalse
import org.junit.Assert.assertNull
import org.junit.Assert.assertTrue
import org.junit.Assert.fail
import org.junit.Test

/** tests/vectors/variant_choice.json: the same cases as the Python chooser and VariantTests.swift. */
class VariantsTest {
    @Test
    fun variantChoiceVectors() {
        val vectors = Vectors.read("variant_choice.json")
        val shared = Variant.listFromJson(vectors["variants"])
        val cases = Vectors.cases("variant_choice.json")
        assertTrue(cases.size >= 14)
        for (case in cases) {
            val name = case["name"] as String
            val variants = if (case.containsKey("variants")) Variant.listFromJson(case["variants"]) else shared
            val choice = VariantChooser.choose(variants, DeviceDescription.fromJson(case["device"]))
            assertEquals(name, case["expected"], choice.target)
            if (choice.target == null) assertEquals(name, variants.map { it.target }.toSet(), choice.reasons.keys)
            else assertFalse(name, choice.reasons.containsKey(choice.target))
        }
    }

    @Test
    fun versionsCompareNumericallyPartByPart() {
        val c = VariantChooser::compareVersions
        assertEquals(0, c("18", "18.0"))
        assertEquals(0, c("18.0.0", "18"))
        assertEquals(-1, c("17.4", "18"))
        assertEquals(1, c("18.1", "18"))
        assertEquals(1, c("17.10", "17.9"))
        assertEquals(-1, c("9", "10"))
        for (bad in listOf("", "18.", "18-beta", "v18", "+18")) {
            assertNull(bad, VariantChooser.versionParts(bad))
            assertNull(bad, c(bad, "18"))
        }
        try {
            DeviceDescription.fromJson(Json.parse(
                "{\"os\": \"ios\", \"os_version\": \"18-beta\", \"isa\": [], \"ram_gb\": 8}"))
            fail("expected a JsonException")
        } catch (e: JsonException) {
        }
    }

    @Test
    fun skippedVariantsAreExplained() {
        val variants = Variant.listFromJson(Vectors.read("variant_choice.json")["variants"])
        val device = DeviceDescription("android", "14", "qnn", "SM8750", listOf("dotprod"), 12.0)
        val choice = VariantChooser.choose(variants, device)
        assertEquals("xnnpack", choice.target)
        assertTrue(choice.reasons.getValue("qnn-htp-sm8750").startsWith("skipped at export: the QNN SDK"))
        assertNull(variants.first().program)
    }
}
