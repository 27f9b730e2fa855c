package dev.llamamobile.demo

import dev.llamamobile.core.Bundle
import dev.llamamobile.core.GenerationStats
import dev.llamamobile.core.TokenClock
import java.util.concurrent.Executors
import org.pytorch.executorch.extension.llm.LlmCallback
import org.pytorch.executorch.extension.llm.LlmModule

/**
 * One verified bundle loaded in ExecuTorch's LlmModule. generate() runs on a single background thread
 * (LlmModule.generate blocks); callbacks arrive on that thread, the caller posts them to the UI.
 */
class Engine(val bundle: Bundle) {
    private val worker = Executors.newSingleThreadExecutor()
    @Volatile private var module = openModule(bundle, bundle.programPath)
    private val clock = TokenClock()

    /** The LoRA adapter last asked for with [useAdapter]; null: the base program. */
    var adapter: String? = null
        private set

    interface Listener {
        fun onToken(text: String)
        fun onDone(status: Int, stats: GenerationStats?, clock: TokenClock)
    }

    fun load(done: (Int) -> Unit) = worker.execute { done(module.load()) }

    /**
     * Switches to LoRA adapter [name] (null: the base program): a new LlmModule on the adapter's program with the
     * same weights file, so nothing is copied. Runs after any generation in progress; the new module starts with an
     * empty KV cache. [done] gets load()'s status. An unknown [name] throws here, before the current module closes.
     */
    fun useAdapter(name: String?, done: (Int) -> Unit) {
        val program = if (name == null) bundle.programPath else bundle.adapterProgramPath(name)
        adapter = name
        worker.execute {
            module.resetNative()
            module = openModule(bundle, program)
            done(module.load())
        }
    }

    /**
     * [prompt] is already fully formatted (template text with special tokens written out). With [resetFirst] false
     * the runner continues from its position: [prompt] is only the new part of a conversation (ChatSession).
     */
    fun generate(prompt: String, maxTokens: Int, listener: Listener, resetFirst: Boolean = true) = worker.execute {
        if (resetFirst) module.resetContext()
        var stats: GenerationStats? = null
        val callback = object : LlmCallback {
            override fun onResult(result: String) {
                clock.token()
                listener.onToken(result)
            }

            override fun onStats(json: String) {
                stats = try { GenerationStats.fromRunnerJson(json) } catch (e: Exception) { null }
            }
        }
        clock.start()
        // seqLen counts prompt and new tokens; characters >= tokens, so at least maxTokens remain for the reply.
        val seqLen = minOf(bundle.manifest.contextLength.toInt(), prompt.length + maxTokens)
        val status = module.generate(prompt, seqLen, callback, false)
        listener.onDone(status, stats, clock)
    }

    fun stop() = module.stop()

    fun close() {
        module.stop()
        worker.shutdown()
        module.resetNative()
    }

    private companion object {
        const val TEMPERATURE = 0.0f  // greedy: Guard verdicts must be reproducible

        /**
         * A bundle with runtime.weights keeps its weights in model.ptd beside model.pte (ExecuTorch
         * program-data separation); LlmModule loads it as its data path, for the base [program] and for every
         * adapter's (a bundle with adapters always has runtime.weights). The constructor
         * LlmModule(String modulePath, String tokenizerPath, float temperature, String dataPath) exists from
         * ExecuTorch 0.6 (pre-1.0 LlmModule.java) and is unchanged on main after 1.5.1. There it passes
         * List.of(dataPath) on, which throws on null, so a bundle without weights takes the 3-argument one.
         */
        fun openModule(bundle: Bundle, program: String): LlmModule {
            val weights = bundle.weightsPath
            return if (weights != null) {
                LlmModule(program, bundle.tokenizerPath, TEMPERATURE, weights)
            } else {
                LlmModule(program, bundle.tokenizerPath, TEMPERATURE)
            }
        }
    }
}
