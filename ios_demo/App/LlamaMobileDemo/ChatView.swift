import LlamaMobileCore
import SwiftUI

/// Chat: a multi-turn conversation on one runner (ChatSession from LlamaMobileCore, as MainActivity.kt uses
/// ChatSession.kt): each turn prefills only what the runner does not hold yet; when the context is full the
/// oldest turns are dropped and the rest re-prefilled (never with an attention-sink bundle, which has no end).
struct ChatView: View {
    @EnvironmentObject var engine: Engine
    @State private var message = ""
    @State private var transcript = ""
    @State private var stats = ""
    @State private var session: ChatSession?
    @State private var sessionBundle: URL?
    @State private var held = 0  // characters the runner holds (>= its tokens)

    private static let maxReplyTokens = 256

    var body: some View {
        VStack(alignment: .leading, spacing: 12) {
            Text(engine.status).font(.footnote).foregroundStyle(.secondary)
            ScrollView { Text(transcript).frame(maxWidth: .infinity, alignment: .leading).textSelection(.enabled) }
            Text(stats).font(.caption.monospacedDigit())
            HStack {
                TextField("Message", text: $message, axis: .vertical).textFieldStyle(.roundedBorder)
                Button("Send", action: send).disabled(engine.bundle?.manifest.model.task != "chat")
                Button("Stop") { engine.stop() }
                Button("New") { session?.reset(); held = 0; transcript = "" }
            }
        }
        .padding()
    }

    private func send() {
        guard let bundle = engine.bundle else { return }
        let manifest = bundle.manifest
        if sessionBundle != bundle.directory {  // a new bundle: a new conversation (its runner starts empty)
            session = try? ChatSession(template: manifest.promptTemplate)
            sessionBundle = bundle.directory
            held = 0
            transcript = ""
        }
        let context = manifest.runtime.contextLength
        let sliding = manifest.runtime.attentionSink != nil
        let prompt: String
        let resetFirst: Bool
        do {
            if let chat = session {
                try chat.add(role: "user", content: message)
                let next = try chat.nextPrompt(cachedTokens: held, context: context, count: { $0.unicodeScalars.count },
                                               reserve: ChatView.maxReplyTokens, slidingWindow: sliding)
                if next.resetFirst { held = 0 }
                prompt = next.text
                resetFirst = next.resetFirst
            } else {
                prompt = manifest.promptTemplate.format(message)
                resetFirst = true
            }
        } catch {
            stats = "\(error)"
            return
        }
        held += prompt.unicodeScalars.count
        let maxNew = max(1, min(ChatView.maxReplyTokens, context - (sliding ? prompt.unicodeScalars.count : held)))
        transcript += (transcript.isEmpty ? "" : "\n\n") + "> " + message + "\n"
        message = ""
        stats = ""
        var reply = ""
        let end = (try? manifest.promptTemplate.conversation().assistantEnd)?
            .trimmingCharacters(in: .whitespacesAndNewlines) ?? ""
        engine.generate(prompt, maxTokens: maxNew, resetFirst: resetFirst, onToken: { token in
            reply += token
            transcript += token
        }) { error, clock in
            if let error = error {
                stats = "generate failed: \(error)"
                return
            }
            // As RunnerEngine in runtime_harness/chat.py: fewer tokens than the limit means a stop token ended it.
            let stopped = clock.tokens < maxNew - 1
            let text = end.isEmpty ? reply : String(reply.components(separatedBy: end)[0])
            session?.replied(text, stopped: stopped)
            held += text.unicodeScalars.count
            stats = String(format: "%d tokens · first token %.0f ms · decode %.1f tok/s", clock.tokens,
                           clock.timeToFirstTokenMs ?? 0, clock.decodeTokensPerSecond)
        }
    }
}
