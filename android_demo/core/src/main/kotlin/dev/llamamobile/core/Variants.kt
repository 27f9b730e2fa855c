package dev.llamamobile.core

// Which of a bundle's variants (one per lowering target) runs on this device: the rules of
// llama_mobile/core/variants.py, checked by tests/vectors/variant_choice.json.

/** What a variant needs of the device; a null (or empty [isa]) states no requirement. */
data class Requirements(
    val os: String? = null,
    val minOs: String? = null,
    val npuBackend: String? = null,
    val chip: String? = null,
    val isa: List<String> = emptyList(),
    val minRamGb: Double? = null
)

/** One entry of the manifest's "variants" list; [status] is "ok" or "skipped" (then [reason] says why). */
data class Variant(
    val target: String,
    val backend: String,
    val status: String,
    val reason: String?,
    val requires: Requirements,
    val program: String?,
    val weights: String?
) {
    companion object {
        fun fromJson(json: Any?): Variant {
            val o = json as? Map<*, *> ?: throw JsonException("a variant must be an object")
            val target = o.str("target")
            val needs = o["requires"] ?: emptyMap<String, Any?>()
            val r = needs as? Map<*, *> ?: throw JsonException("variants[$target].requires must be an object")
            val minOs = r.optStr("min_os")
            if (minOs != null) checkVersion(minOs)
            val requires = Requirements(
                os = r.optStr("os"),
                minOs = minOs,
                npuBackend = r.optStr("npu_backend"),
                chip = r.optStr("chip"),
                isa = r.strList("isa"),
                minRamGb = r.optNumber("min_ram_gb")
            )
            return Variant(target, o.str("backend"), o.str("status"), o.optStr("reason"), requires,
                o.optStr("program"), o.optStr("weights"))
        }

        /** The manifest's "variants" list, in its order (ties go to the one listed first). */
        fun listFromJson(json: Any?): List<Variant> {
            val list = json as? List<*> ?: throw JsonException("variants must be an array")
            return list.map { fromJson(it) }
        }
    }
}

/** The device the app runs on; [osVersion] is dotted ("17.4", "14"). */
data class DeviceDescription(
    val os: String,  // "android" or "ios"
    val osVersion: String,
    val npuBackend: String?,
    val chip: String?,
    val isa: List<String>,
    val ramGb: Double
) {
    companion object {
        fun fromJson(json: Any?): DeviceDescription {
            val o = json as? Map<*, *> ?: throw JsonException("a device must be an object")
            val version = checkVersion(o.str("os_version"))
            return DeviceDescription(o.str("os"), version, o.optStr("npu_backend"), o.optStr("chip"), o.strList("isa"),
                o.optNumber("ram_gb") ?: throw JsonException("\"ram_gb\" must be a number"))
        }
    }
}

/** The chosen variant's target, null when none runs here; [reasons] says why each other one does not. */
data class Choice(val target: String?, val reasons: Map<String, String>)

/**
 * The first variant of the best rank among those the device meets every requirement of: an NPU one (QNN,
 * NeuroPilot) before Core ML, before XNNPACK, before any other backend.
 */
object VariantChooser {
    val RANK = mapOf("qnn" to 0, "neuropilot" to 0, "coreml" to 1, "xnnpack" to 2)
    const val OTHER_RANK = 3

    fun rank(backend: String): Int = RANK[backend] ?: OTHER_RANK

    /** "17.4" -> [17, 4]; null for anything but dot-separated digits ("18-beta", "18."). */
    fun versionParts(version: String): List<Long>? {
        val parts = version.split('.')
        if (parts.any { part -> part.isEmpty() || !part.all { it in '0'..'9' } }) return null
        return parts.map { it.toLongOrNull() ?: return null }
    }

    /**
     * -1, 0 or 1 as [a] is below, equal to or above [b], part by part with missing parts 0 ("18" == "18.0");
     * null when either is not a dotted version.
     */
    fun compareVersions(a: String, b: String): Int? {
        val x = versionParts(a) ?: return null
        val y = versionParts(b) ?: return null
        for (i in 0 until maxOf(x.size, y.size)) {
            val c = x.getOrElse(i) { 0L }.compareTo(y.getOrElse(i) { 0L })
            if (c != 0) return c.coerceIn(-1, 1)
        }
        return 0
    }

    /** Why [variant] cannot run on [device]; null when it can. */
    fun whyNot(variant: Variant, device: DeviceDescription): String? {
        if (variant.status != "ok") return "skipped at export: ${variant.reason ?: "no reason given"}"
        val r = variant.requires
        val missing = r.isa.filter { it !in device.isa }
        return when {
            r.os != null && r.os != device.os -> "needs ${r.os}, the device runs ${device.os}"
            r.minOs != null && (compareVersions(device.osVersion, r.minOs) ?: -1) < 0 ->
                "needs ${r.os ?: "OS"} ${r.minOs}, the device has ${device.osVersion}"
            r.npuBackend != null && r.npuBackend != device.npuBackend -> "needs a ${r.npuBackend} NPU"
            r.chip != null && r.chip != device.chip -> "compiled for ${r.chip}, the device has ${device.chip}"
            missing.isNotEmpty() -> "needs CPU features ${missing.joinToString(", ")}"
            r.minRamGb != null && device.ramGb < r.minRamGb -> "needs ${r.minRamGb} GB of RAM, the device has ${device.ramGb}"
            else -> null
        }
    }

    fun choose(variants: List<Variant>, device: DeviceDescription): Choice {
        val reasons = LinkedHashMap<String, String>()
        var best: Variant? = null
        for (variant in variants) {
            val reason = whyNot(variant, device)
            if (reason != null) reasons[variant.target] = reason
            else if (best == null || rank(variant.backend) < rank(best.backend)) best = variant
        }
        return Choice(best?.target, reasons)
    }
}

private fun checkVersion(version: String): String {
    if (VariantChooser.versionParts(version) == null) throw JsonException("\"$version\" is not a dotted version")
    return version
}

private fun Map<*, *>.optStr(key: String): String? {
    val v = this[key] ?: return null
    return v as? String ?: throw JsonException("\"$key\" must be a string or null")
}

private fun Map<*, *>.optNumber(key: String): Double? {
    val v = this[key] ?: return null
    return (v as? Number)?.toDouble() ?: throw JsonException("\"$key\" must be a number or null")
}

private fun Map<*, *>.strList(key: String): List<String> {
    val v = this[key] ?: return emptyList()
    val list = v as? List<*> ?: throw JsonException("\"$key\" must be an array")
    return list.map { it as? String ?: throw JsonException("\"$key\" must hold strings") }
}
