package dev.llamamobile.demo

import android.app.Activity
import android.os.Bundle as SavedState
import android.os.Handler
import android.os.Looper
import android.view.View
import android.widget.Button
import android.widget.EditText
import android.widget.LinearLayout
import android.widget.ScrollView
import android.widget.TextView
import dev.llamamobile.core.Bundle
import dev.llamamobile.core.ChatSession
import dev.llamamobile.core.ChatTemplate
import dev.llamamobile.core.ChatTemplateException
import dev.llamamobile.core.ContextOverflowException
import dev.llamamobile.core.GenerationStats
import dev.llamamobile.core.GuardPrompt
import dev.llamamobile.core.GuardReplyException
import dev.llamamobile.core.TokenClock
import dev.llamamobile.core.Turn
import java.io.File
import java.util.Locale

/**
 * Two screens over one bundle folder: Chat (streams tokens, shows tokens/s) and Guard (formats the
 * Llama Guard 3 prompt, shows safe/unsafe and the violated categories). Views are built in code to keep
 * the skeleton to one file.
 */
class MainActivity : Activity() {
    private val main = Handler(Looper.getMainLooper())
    private var engine: Engine? = null
    // Multi-turn chat on one KV cache: only each turn's new text is prefilled (null: a template without turns).
    private var session: ChatSession? = null
    private var held = 0  // characters the runner holds (characters >= tokens: a safe over-count)
    private var sessionEngine: Engine? = null

    private lateinit var bundlePath: EditText
    private lateinit var status: TextView
    private lateinit var chatScreen: LinearLayout
    private lateinit var guardScreen: LinearLayout
    private lateinit var chatInput: EditText
    private lateinit var chatOutput: TextView
    private lateinit var guardUser: EditText
    private lateinit var guardAgent: EditText
    private lateinit var guardOutput: TextView

    override fun onCreate(savedInstanceState: SavedState?) {
        super.onCreate(savedInstanceState)
        val root = column()
        bundlePath = EditText(this).apply { setText(DEFAULT_BUNDLE); isSingleLine = true }
        status = TextView(this).apply { text = "No bundle loaded" }
        root.addView(bundlePath)
        root.addView(row(button("Load bundle") { loadBundle() }, button("Chat") { show(chat = true) },
            button("Guard") { show(chat = false) }))
        root.addView(status)

        chatInput = EditText(this).apply { hint = "Message" }
        chatOutput = TextView(this).apply { setTextIsSelectable(true) }
        chatScreen = column(chatInput, row(button("Send") { sendChat() }, button("Stop") { engine?.stop() },
            button("Adapter") { nextAdapter() }), chatOutput)

        guardUser = EditText(this).apply { hint = "User message" }
        guardAgent = EditText(this).apply { hint = "Assistant reply (optional: then the reply is checked)" }
        guardOutput = TextView(this)
        guardScreen = column(guardUser, guardAgent, button("Check") { runGuard() }, guardOutput)

        root.addView(chatScreen)
        root.addView(guardScreen)
        setContentView(ScrollView(this).apply { addView(root) })
        show(chat = true)
    }

    override fun onDestroy() {
        engine?.close()
        super.onDestroy()
    }

    private fun loadBundle() {
        engine?.close()
        engine = null
        status.text = "Verifying SHA-256 of every file…"
        val dir = File(bundlePath.text.toString())
        Thread {
            try {
                val bundle = Bundle.open(dir)  // refuses a bundle whose files do not match the manifest
                val loaded = Engine(bundle)
                loaded.load { code ->
                    main.post {
                        engine = if (code == 0) loaded else null
                        val m = bundle.manifest
                        status.text = if (code == 0) "${m.preset} (${m.task}), context ${m.contextLength}, verified"
                        else "ExecuTorch load failed with error $code"
                        show(chat = m.task == "chat")
                    }
                }
            } catch (e: Exception) {
                main.post { status.text = "Bundle refused: ${e.message}" }
            }
        }.start()
    }

    /** Cycles base -> each LoRA adapter -> base on the same weights file; the conversation starts again. */
    private fun nextAdapter() {
        val current = engine ?: return run { status.text = "Load a bundle first" }
        val choices = listOf<String?>(null) + current.bundle.adapterNames
        if (choices.size == 1) return run { status.text = "This bundle has no adapters" }
        val next = choices[(choices.indexOf(current.adapter) + 1) % choices.size]
        sessionEngine = null  // the new module's runner starts empty
        status.text = "Loading ${next ?: "the base model"}…"
        current.useAdapter(next) { code ->
            main.post {
                status.text = if (code == 0) "Adapter: ${next ?: "none (base model)"}" else "ExecuTorch load failed with error $code"
            }
        }
    }

    private fun sendChat() {
        val current = engine ?: return run { status.text = "Load a bundle first" }
        val template = current.bundle.manifest.promptTemplate
        if (sessionEngine !== current) {  // a new bundle: a new conversation (its runner starts empty)
            session = try { ChatSession(template) } catch (e: ChatTemplateException) { null }
            sessionEngine = current
            held = 0
        }
        val chat = session
        val context = current.bundle.manifest.contextLength.toInt()
        val sliding = current.bundle.manifest.attentionSink != null  // no end of context: no drop-oldest policy
        val chars = { s: String -> s.length }
        val prompt: String
        val resetFirst: Boolean
        try {
            if (chat != null) {
                chat.add("user", chatInput.text.toString())
                val next = chat.nextPrompt(held, context, chars, reserve = MAX_CHAT_TOKENS, slidingWindow = sliding)
                if (next.resetFirst) held = 0
                prompt = next.text
                resetFirst = next.resetFirst
            } else {
                prompt = template.format(chatInput.text.toString())
                resetFirst = true
            }
        } catch (e: ContextOverflowException) {
            status.text = e.message
            return
        }
        held += prompt.length
        val maxNew = maxOf(1, minOf(MAX_CHAT_TOKENS, context - (if (sliding) prompt.length else held)))
        val reply = StringBuilder()
        chatOutput.text = ""
        current.generate(prompt, maxNew, object : Engine.Listener {
            override fun onToken(text: String) {
                reply.append(text)
                main.post { chatOutput.append(text) }
            }

            override fun onDone(status: Int, stats: GenerationStats?, clock: TokenClock) {
                // As RunnerEngine in runtime_harness/chat.py: fewer fed tokens than the limit allows means a stop token.
                val stopped = status == 0 && stats != null && stats.generatedTokens < maxNew - 1
                val text = reply.toString().substringBefore(template.conversationEndMarker())
                main.post {
                    chat?.replied(text, stopped)
                    held += text.length
                    chatOutput.append("\n\n" + describe(status, stats, clock))
                }
            }
        }, resetFirst)
    }

    /** The stop token that closes a reply ("<|im_end|>", "<|eot_id|>"), which the runner streams last. */
    private fun ChatTemplate.conversationEndMarker(): String =
        (try { conversation().assistantEnd } catch (e: ChatTemplateException) { "" }).trim().ifEmpty { "\u0000" }

    private fun runGuard() {
        val current = engine ?: return run { status.text = "Load a bundle first" }
        if (current.bundle.manifest.task != "guard") {
            guardOutput.text = "This bundle is a chat model; export llama-guard-3-1b for the Guard screen."
            return
        }
        val turns = mutableListOf(Turn("user", guardUser.text.toString()))
        if (guardAgent.text.isNotBlank()) turns.add(Turn("assistant", guardAgent.text.toString()))
        val prompt = GuardPrompt.format(turns)
        val reply = StringBuilder()
        guardOutput.text = "Checking…"
        current.generate(prompt, MAX_GUARD_TOKENS, object : Engine.Listener {
            override fun onToken(text: String) {
                reply.append(text)
            }

            override fun onDone(status: Int, stats: GenerationStats?, clock: TokenClock) {
                val verdict = try {
                    val v = GuardPrompt.parseReply(reply.toString())
                    if (v.safe) "SAFE" else "UNSAFE: " + v.categories.zip(v.names).joinToString { "${it.first} ${it.second}" }
                } catch (e: GuardReplyException) {
                    "Unreadable reply: ${e.message}"
                }
                main.post { guardOutput.text = verdict + "\n" + describe(status, stats, clock) }
            }
        })
    }

    private fun describe(status: Int, stats: GenerationStats?, clock: TokenClock): String {
        if (status != 0) return "generate() failed with ExecuTorch error $status"
        return if (stats != null) String.format(Locale.US, "%d tokens · first token %.0f ms · prefill %.1f tok/s · decode %.1f tok/s",
            stats.generatedTokens, stats.timeToFirstTokenMs, stats.prefillTokensPerSecond, stats.decodeTokensPerSecond)
        else String.format(Locale.US, "%d tokens · first token %.0f ms · decode %.1f tok/s (app clock)",
            clock.tokens, clock.timeToFirstTokenMs, clock.decodeTokensPerSecond)
    }

    private fun show(chat: Boolean) {
        chatScreen.visibility = if (chat) View.VISIBLE else View.GONE
        guardScreen.visibility = if (chat) View.GONE else View.VISIBLE
    }

    private fun column(vararg children: View) = LinearLayout(this).apply {
        orientation = LinearLayout.VERTICAL
        setPadding(24, 24, 24, 24)
        children.forEach { addView(it) }
    }

    private fun row(vararg children: View) = LinearLayout(this).apply {
        orientation = LinearLayout.HORIZONTAL
        children.forEach { addView(it) }
    }

    private fun button(label: String, action: () -> Unit) = Button(this).apply {
        text = label
        setOnClickListener { action() }
    }

    companion object {
        const val DEFAULT_BUNDLE = "/data/local/tmp/llama"
        const val MAX_CHAT_TOKENS = 256
        const val MAX_GUARD_TOKENS = 12
    }
}
