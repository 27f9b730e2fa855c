import ExecuTorchLLM
import Foundation
import LlamaMobileCore

struct EngineError: Error, CustomStringConvertible {
    let description: String
}

/// One verified bundle in ExecuTorch's TextLLMRunner. Bundles live in the app's Documents/llama folder
/// (copied there with Finder, see README.md). generate() blocks, so it runs on a background queue.
@MainActor
final class Engine: ObservableObject {
    @Published var status = "No bundle loaded"
    @Published private(set) var bundle: VerifiedBundle?
    private var runner: TextLLMRunner?
    private let queue = DispatchQueue(label: "llama-mobile.generate")

    static var bundleFolder: URL {
        FileManager.default.urls(for: .documentDirectory, in: .userDomainMask)[0].appendingPathComponent("llama")
    }

    func loadBundle(_ folder: URL = Engine.bundleFolder) {
        status = "Verifying SHA-256 of every file…"
        queue.async {
            do {
                let verified = try VerifiedBundle.open(folder)  // refuses files that do not match the manifest
                try Engine.checkLoadable(verified)
                let runner = TextLLMRunner(modelPath: verified.programPath, tokenizerPath: verified.tokenizerPath,
                                           specialTokens: Engine.specialTokens(verified.manifest))
                try runner.load()
                Task { @MainActor in
                    self.bundle = verified
                    self.runner = runner
                    let m = verified.manifest
                    self.status = "\(m.model.preset) (\(m.model.task)), context \(m.runtime.contextLength), verified"
                }
            } catch {
                Task { @MainActor in self.status = "Bundle refused: \(error)" }
            }
        }
    }

    /// Streams tokens of the reply to an already formatted prompt; `done` gets the app-side clock. With
    /// `resetFirst` false the runner continues from its position: `prompt` is only the new part of a conversation
    /// (ChatSession), as Engine.kt does with LlmModule.
    func generate(_ prompt: String, maxTokens: Int, resetFirst: Bool = true, onToken: @escaping (String) -> Void,
                  done: @escaping (Error?, TokenClock) -> Void) {
        guard let runner = runner, let bundle = bundle else { return }
        let clock = TokenClock()
        // sequenceLength counts prompt and new tokens; characters >= tokens, so maxTokens remain for the reply.
        let length = min(bundle.manifest.runtime.contextLength, prompt.unicodeScalars.count + maxTokens)
        queue.async {
            if resetFirst { runner.reset() }
            clock.start()
            var failure: Error?
            do {
                try runner.generate(prompt, Config {
                    $0.temperature = 0  // greedy: Guard verdicts must be reproducible
                    $0.sequenceLength = length
                }) { token in
                    clock.token()
                    DispatchQueue.main.async { onToken(token) }  // FIFO, unlike separate Tasks
                }
            } catch {
                failure = error
            }
            DispatchQueue.main.async { done(failure, clock) }  // after every token
        }
    }

    func stop() { runner?.stop() }

    /// ExecuTorch's iOS text runner (ExecuTorchLLMTextRunner, 1.x) takes a model path, a tokenizer path and
    /// special tokens only: it has no data path, so it cannot load the external weights file (model.ptd)
    /// of a bundle with runtime.weights. Refuse such a bundle here rather than fail inside load().
    nonisolated static func checkLoadable(_ bundle: VerifiedBundle) throws {
        if let weights = bundle.manifest.runtime.weights {
            throw EngineError(description: "this bundle keeps its weights in \(weights) (runtime.weights), and "
                + "ExecuTorch's iOS TextLLMRunner cannot load an external weights file; on iOS use a bundle "
                + "without one (see README.md), or run this bundle in the Android app")
        }
    }

    /// The tokenizer's special tokens by name, so the prompt's written-out markers become single tokens.
    static func specialTokens(_ manifest: Manifest) -> [String] {
        manifest.promptTemplate.name == "llama3"
            ? ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eom_id|>",
               "<|eot_id|>", "<|python_tag|>"]
            : []
    }
}
