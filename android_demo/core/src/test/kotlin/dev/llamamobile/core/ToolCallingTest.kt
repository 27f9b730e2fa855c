package dev.llamamobile.core

import org.junit.Assert.assertEquals
import org.junit.Assert.assertFalse
import org.junit.Assert.assertTrue
import org.junit.Assert.fail
import org.junit.Test

/** tests/vectors/tool_prompts.json and tool_replies.json: the same formatter and strict parser as Python. */
class ToolCallingTest {
    private val prompts = Vectors.read("tool_prompts.json")
    private val replies = Vectors.read("tool_replies.json")

    @Suppress("UNCHECKED_CAST")
    private fun list(m: Map<*, *>, key: String) = m[key] as List<Map<*, *>>

    @Test
    fun instructionsAreThePythonOnes() {
        assertEquals(prompts["instructions"], ToolCalling.INSTRUCTIONS)
    }

    @Test
    fun promptVectors() {
        val cases = list(prompts, "prompts")
        assertTrue(cases.size >= 4)
        for (case in cases) {
            val name = case["name"] as String
            val tools = ToolCalling.readTools(case["tools"])
            val messages = ChatMessage.listFromJson(case["messages"])
            val system = if (messages[0].role == "system") messages[0].content else null
            assertEquals(name, case["system"], ToolCalling.systemPrompt(tools, system))
            val template = ChatTemplate.fromJson(case["template"] as Map<*, *>)
            assertEquals(name, case["expected"], template.render(ToolCalling.renderMessages(ToolCalling.withTools(messages, tools))))
        }
    }

    @Test
    fun badToolDefinitions() {
        for (case in list(prompts, "tool_errors")) {
            try {
                ToolCalling.readTools(case["tools"])
                fail("accepted: ${case["name"]}")
            } catch (e: ToolDefinitionException) {
            }
        }
    }

    @Test
    fun replyVectors() {
        val tools = ToolCalling.readTools(replies["tools"])
        val cases = list(replies, "cases")
        assertTrue(cases.size >= 20)
        for (case in cases) {
            val name = case["name"] as String
            val parsed = ToolCalling.parseReply(case["reply"] as String, tools)
            val calls = parsed.calls.map { linkedMapOf("name" to it.name, "arguments" to it.arguments) }
            assertEquals(name, case["calls"], calls)
            assertEquals(name, case["text"], parsed.text)
            assertEquals(name, case["invalid"], parsed.error != null)
            assertFalse(name, parsed.isCall && parsed.error != null)
        }
    }

    @Test
    fun everyPrefixOfACallIsFlaggedNeverThrown() {
        val tools = ToolCalling.readTools(replies["tools"])
        val call = "[get_user_info(user_id=7890, special='bl\\'ack', tags=['a', \"b\"], nested={'k': [1, 2.5]})]"
        for (end in 1 until call.length) {
            val parsed = ToolCalling.parseReply(call.substring(0, end), tools)
            assertFalse(parsed.isCall)
            if (end > "[get_user_info(".length) assertTrue(call.substring(0, end), parsed.error != null)
        }
        assertTrue(ToolCalling.parseReply(call, tools).isCall)
    }

    @Test
    fun doublesAsPythonWritesThem() {
        val cases = mapOf(0.5 to "0.5", 25.0 to "25.0", -2.25 to "-2.25", 1e16 to "1e+16", 1.5e-5 to "1.5e-05",
            0.0001 to "0.0001", 12345678.9 to "12345678.9", 1e22 to "1e+22")
        for ((d, text) in cases) assertEquals(text, JsonWriter.double(d))
    }
}
