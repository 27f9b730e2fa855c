package dev.llamamobile.core

import org.junit.Assert.assertEquals
import org.junit.Assert.assertTrue
import org.junit.Test

/** ChatSession: the text an app hands a runner that continues from its position, as Conversation in Python. */
class ChatSessionTest {
    private val chars = { s: String -> s.codePointCount(0, s.length) }

    @Test
    fun deltasAddUpToTheWholeConversation() {
        val session = ChatSession(ChatTemplate.CHATML_SMOL, system = "Be brief.")
        val sent = StringBuilder()
        for ((i, message) in listOf("Hi", "Name a planet.", "Grüße 🦙 <|im_end|>").withIndex()) {
            session.add("user", message)
            val prompt = session.nextPrompt(chars(sent.toString()), 4096, chars)
            assertEquals(i == 0, prompt.resetFirst)
            if (i > 0) assertTrue(prompt.text.startsWith(ChatTemplate.CHATML_SMOL.assistantEnd))
            sent.append(prompt.text)
            val reply = "reply $i"
            sent.append(reply)
            session.replied(reply, stopped = true)
        }
        val whole = session.template.render(session.messages, generationPrompt = false)
        assertEquals(whole, sent.toString() + ChatTemplate.CHATML_SMOL.assistantEnd)
    }

    @Test
    fun aCutReplyRebuildsAndALongHistoryDropsTheOldestTurns() {
        val session = ChatSession(ChatTemplate.LLAMA3, system = "S")
        session.add("user", "one")
        session.replied("cut", stopped = false)
        session.add("user", "two")
        assertTrue(session.nextPrompt(100, 4096, chars).resetFirst)
        session.replied("ok", stopped = true)
        var held = 0  // what the runner holds
        for (i in 0 until 20) {
            session.add("user", "message number $i with some words")
            val prompt = session.nextPrompt(held, 600, chars, reserve = 32)
            if (prompt.resetFirst) held = 0
            held += chars(prompt.text)
            assertTrue(held + 32 <= 600)
            session.replied("answer $i", stopped = true)
            held += chars("answer $i")
        }
        assertTrue(session.dropped > 0)
        assertEquals("system", session.window[0].role)
        assertEquals("user", session.window[1].role)
    }

    @Test
    fun anAttentionSinkBundleGoesPastTheContextWithoutDropping() {
        val session = ChatSession(ChatTemplate.LLAMA3, system = "S")
        var held = 0  // what the runner has been fed: past the context, its ring recycles the slots
        for (i in 0 until 20) {
            session.add("user", "message number $i with some words")
            val prompt = session.nextPrompt(held, 600, chars, reserve = 32, slidingWindow = true)
            assertEquals(i == 0, prompt.resetFirst)
            held += chars(prompt.text) + chars("answer $i")
            session.replied("answer $i", stopped = true)
        }
        assertTrue(held > 2 * 600)
        assertEquals(0, session.dropped)
        assertEquals(41, session.window.size)  // the system prompt and every turn
    }
}
