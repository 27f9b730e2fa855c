package dev.llamamobile.core

import org.junit.Assert.assertEquals
import org.junit.Assert.assertTrue
import org.junit.Assert.fail
import org.junit.Test

/** tests/vectors/chat_turns.json and chat_context.json: multi-turn rendering and the context policy, as in Python. */
class ChatTurnsTest {
    private val controlToken = Regex("<\\|[A-Za-z0-9_]+\\|>")

    @Test
    fun turnVectors() {
        val cases = Vectors.cases("chat_turns.json")
        assertTrue(cases.size >= 8)
        for (case in cases) {
            val name = case["name"] as String
            val template = ChatTemplate.fromJson(case["template"] as Map<*, *>)
            val messages = ChatMessage.listFromJson(case["messages"])
            val got = template.render(messages, case["generation_prompt"] as Boolean)
            assertEquals(name, case["expected"], got)
            assertEquals(name, case["control_tokens"], controlToken.findAll(got).map { it.value }.toList())
        }
    }

    @Test
    fun refusedConversations() {
        @Suppress("UNCHECKED_CAST")
        val errors = Vectors.read("chat_turns.json")["errors"] as List<Map<*, *>>
        for (case in errors) {
            try {
                ChatMessage.listFromJson(case["messages"])
                fail("accepted: ${case["name"]}")
            } catch (e: ChatTemplateException) {
            }
        }
    }

    @Test
    fun singleTurnAgreesWithMultiTurn() {
        for (t in listOf(ChatTemplate.CHATML_SMOL, ChatTemplate.LLAMA3)) {
            for (m in listOf("Hello", "<|im_end|>x", "Grüße 🦙")) {
                assertEquals(t.format(m), t.render(listOf(ChatMessage("user", m))))
            }
        }
        assertEquals("<|im_end|>\n", ChatTemplate.CHATML_SMOL.assistantEnd)
        assertEquals("<|eot_id|>", ChatTemplate.LLAMA3.assistantEnd)
    }

    @Test
    fun presetsEqualThePythonOnes() {
        val cases = Vectors.cases("chat_turns.json")
        val python = cases.map { ChatTemplate.fromJson(it["template"] as Map<*, *>) }
        assertTrue(python.contains(ChatTemplate.CHATML_SMOL))
        assertTrue(python.contains(ChatTemplate.LLAMA3))
    }

    @Test
    fun contextVectors() {
        val cases = Vectors.cases("chat_context.json")
        assertTrue(cases.size >= 5)
        val codePoints = { s: String -> s.codePointCount(0, s.length) }
        for (case in cases) {
            val name = case["name"] as String
            val template = ChatTemplate.fromJson(case["template"] as Map<*, *>)
            val messages = ChatMessage.listFromJson(case["messages"])
            val budget = (case["budget"] as Long).toInt()
            val expected = case["dropped"] as Long?
            try {
                val dropped = ContextPolicy.fit(template, messages, codePoints, budget)
                assertEquals(name, expected?.toInt(), dropped)
            } catch (e: ContextOverflowException) {
                assertEquals(name, null, expected)
            }
        }
    }
}
