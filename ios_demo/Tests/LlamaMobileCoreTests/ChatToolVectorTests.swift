import Foundation
import XCTest
@testable import LlamaMobileCore

/// tests/vectors/chat_turns.json, chat_context.json, tool_prompts.json, tool_replies.json: the same checks as
/// ChatTurnsTest.kt and ToolCallingTest.kt (and tests/test_chat.py, tests/test_tools.py).
final class ChatToolVectorTests: XCTestCase {
    func read(_ name: String) throws -> JSONValue {
        let data = try Data(contentsOf: VectorTests.vectors.appendingPathComponent(name))
        return try JSONValue.parse(String(decoding: data, as: UTF8.self))
    }

    func items(_ v: JSONValue?) -> [JSONValue] { if case .array(let a)? = v { return a } else { return [] } }
    func str(_ v: JSONValue?) -> String { if case .string(let s)? = v { return s } else { return "" } }

    func template(_ v: JSONValue?) throws -> ChatTemplate {
        let data = Data(JSONWriter.write(v!).utf8)
        return try JSONDecoder().decode(ChatTemplate.self, from: data)
    }

    func testTurnVectors() throws {
        let vectors = try read("chat_turns.json")
        let cases = items(vectors["cases"])
        XCTAssertGreaterThanOrEqual(cases.count, 8)
        for c in cases {
            let got = try template(c["template"]).render(try ChatMessage.list(from: c["messages"]!),
                                                           generationPrompt: c["generation_prompt"] == JSONValue.bool(true))
            // Compare scalars: Swift's String == treats canonically equivalent text as equal.
            XCTAssertEqual(Array(got.unicodeScalars), Array(str(c["expected"]).unicodeScalars), str(c["name"]))
        }
        for c in items(vectors["errors"]) {
            XCTAssertThrowsError(try ChatMessage.list(from: c["messages"]!), str(c["name"]))
        }
    }

    func testContextVectors() throws {
        for c in items(try read("chat_context.json")["cases"]) {
            let messages = try ChatMessage.list(from: c["messages"]!)
            guard case .int(let budget)? = c["budget"] else { return XCTFail("budget") }
            let count = { (s: String) in s.unicodeScalars.count }
            if case .int(let dropped)? = c["dropped"] {
                XCTAssertEqual(try ContextPolicy.fit(try template(c["template"]), messages, count: count, budget: Int(budget)),
                               Int(dropped), str(c["name"]))
            } else {
                XCTAssertThrowsError(try ContextPolicy.fit(try template(c["template"]), messages, count: count, budget: Int(budget)))
            }
        }
    }

    func testAnAttentionSinkBundleGoesPastTheContextWithoutDropping() throws {
        let session = try ChatSession(template: ChatTemplate.llama3, system: "S")
        let count = { (s: String) in s.unicodeScalars.count }
        var held = 0
        for i in 0..<20 {
            try session.add(role: "user", content: "message number \(i) with some words")
            let prompt = try session.nextPrompt(cachedTokens: held, context: 600, count: count, reserve: 32,
                                                slidingWindow: true)
            XCTAssertEqual(prompt.resetFirst, i == 0)
            held += count(prompt.text) + count("answer \(i)")
            session.replied("answer \(i)", stopped: true)
        }
        XCTAssertGreaterThan(held, 2 * 600)
        XCTAssertEqual(session.dropped, 0)
        XCTAssertEqual(session.window.count, 41)
    }

    func testToolPromptVectors() throws {
        let vectors = try read("tool_prompts.json")
        XCTAssertEqual(str(vectors["instructions"]), ToolCalling.instructions)
        for c in items(vectors["prompts"]) {
            let tools = try ToolCalling.readTools(c["tools"]!)
            let messages = try ChatMessage.list(from: c["messages"]!)
            let system = messages.first?.role == "system" ? messages[0].content : nil
            XCTAssertEqual(Array(ToolCalling.systemPrompt(tools, system: system).unicodeScalars),
                           Array(str(c["system"]).unicodeScalars), str(c["name"]))
            let got = try template(c["template"]).render(ToolCalling.renderMessages(ToolCalling.withTools(messages, tools)))
            XCTAssertEqual(Array(got.unicodeScalars), Array(str(c["expected"]).unicodeScalars), str(c["name"]))
        }
        for c in items(vectors["tool_errors"]) {
            XCTAssertThrowsError(try ToolCalling.readTools(c["tools"]!), str(c["name"]))
        }
    }

    func testReplyVectors() throws {
        let vectors = try read("tool_replies.json")
        let tools = try ToolCalling.readTools(vectors["tools"]!)
        for c in items(vectors["cases"]) {
            let parsed = ToolCalling.parseReply(str(c["reply"]), tools: tools)
            XCTAssertEqual(JSONValue.array(parsed.calls.map { $0.json }), c["calls"]!, str(c["name"]))
            XCTAssertEqual(Array(parsed.text.unicodeScalars), Array(str(c["text"]).unicodeScalars), str(c["name"]))
            XCTAssertEqual(parsed.error != nil, c["invalid"] == JSONValue.bool(true), str(c["name"]))
        }
    }

    func testEveryPrefixOfACallIsFlaggedNeverThrown() throws {
        let tools = try ToolCalling.readTools(try read("tool_replies.json")["tools"]!)
        let call = Array("[get_user_info(user_id=7890, special='bl\\'ack', tags=['a', \"b\"], nested={'k': [1, 2.5]})]")
        for end in 1..<call.count {
            let parsed = ToolCalling.parseReply(String(call[..<end]), tools: tools)
            XCTAssertFalse(parsed.isCall)
            if end > "[get_user_info(".count { XCTAssertNotNil(parsed.error) }
        }
        XCTAssertTrue(ToolCalling.parseReply(String(call), tools: tools).isCall)
    }

    func testDoublesAsPythonWritesThem() {
        let cases: [(Double, String)] = [(0.5, "0.5"), (25.0, "25.0"), (-2.25, "-2.25"), (1e16, "1e+16"), (1.5e-5, "1.5e-05"),
                                         (0.0001, "0.0001"), (12345678.9, "12345678.9"), (1e22, "1e+22")]
        for (d, text) in cases { XCTAssertEqual(JSONWriter.double(d), text) }
    }
}

/// ChatSession: the same checks as ChatSessionTest.kt.
final class ChatSessionTests: XCTestCase {
    let chars = { (s: String) in s.unicodeScalars.count }

    func testDeltasAddUpToTheWholeConversation() throws {
        let session = try ChatSession(template: .chatMLSmol, system: "Be brief.")
        var sent = ""
        for (i, message) in ["Hi", "Name a planet.", "Grüße 🦙 <|im_end|>"].enumerated() {
            try session.add(role: "user", content: message)
            let prompt = try session.nextPrompt(cachedTokens: chars(sent), context: 4096, count: chars)
            XCTAssertEqual(prompt.resetFirst, i == 0)
            sent += prompt.text + "reply \(i)"
            session.replied("reply \(i)", stopped: true)
        }
        let whole = try session.template.render(session.messages, generationPrompt: false)
        XCTAssertEqual(Array(whole.unicodeScalars), Array((sent + ChatTemplate.chatMLSmol.assistantEnd).unicodeScalars))
    }

    func testACutReplyRebuildsAndALongHistoryDropsTheOldestTurns() throws {
        let session = try ChatSession(template: .llama3, system: "S")
        try session.add(role: "user", content: "one")
        session.replied("cut", stopped: false)
        try session.add(role: "user", content: "two")
        XCTAssertTrue(try session.nextPrompt(cachedTokens: 100, context: 4096, count: chars).resetFirst)
        session.replied("ok", stopped: true)
        var held = 0
        for i in 0..<20 {
            try session.add(role: "user", content: "message number \(i) with some words")
            let prompt = try session.nextPrompt(cachedTokens: held, context: 600, count: chars, reserve: 32)
            if prompt.resetFirst { held = 0 }
            held += chars(prompt.text)
            XCTAssertLessThanOrEqual(held + 32, 600)
            session.replied("answer \(i)", stopped: true)
            held += chars("answer \(i)")
        }
        XCTAssertGreaterThan(session.dropped, 0)
        XCTAssertEqual(session.window[0].role, "system")
        XCTAssertEqual(session.window[1].role, "user")
    }
}
