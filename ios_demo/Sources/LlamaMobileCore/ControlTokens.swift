/// User text never becomes control tokens: the rule of neutralize_specials in llama_mobile/core/tokenizer.py
/// (read its docstring) and of ControlTokens.kt, held to one output by tests/vectors/injection.json.
///
/// ExecuTorch's runner takes the prompt as a string and turns every special token written in it
/// (<|im_end|>, <|eot_id|>, ...) into its id, so a message that spells one would close its turn or forge a
/// Llama Guard verdict. In text from a user a WORD JOINER (U+2060) is therefore inserted after the "<" of
/// every "<|" and after the first scalar of every occurrence of one of `markers` (and of the `extra`
/// strings longer than one scalar). The joiner is invisible; the template's own control tokens are not user
/// text and keep their ids. The text is walked by Unicode scalars, as Python walks code points (a Swift
/// Character may join "|" with a combining mark that follows it).
public enum ControlTokens {
    public static let wordJoiner: Unicode.Scalar = "\u{2060}"

    /// The special tokens of the embedded SmolLM2 tokenizer that do not begin with "<|" (StarCoder's markers).
    public static let markers: [String] = [
        "<repo_name>", "<reponame>", "<file_sep>", "<filename>", "<gh_stars>", "<issue_start>",
        "<issue_comment>", "<issue_closed>", "<jupyter_start>", "<jupyter_text>", "<jupyter_code>",
        "<jupyter_output>", "<jupyter_script>", "<empty_output>",
    ]

    public static func neutralize(_ text: String, extra: [String] = []) -> String {
        let cuts: [[Unicode.Scalar]] = (markers + extra).map { Array($0.unicodeScalars) }.filter {
            $0.count > 1 && !($0[0] == "<" && $0[1] == "|")
        }
        let scalars = Array(text.unicodeScalars)
        var out = String.UnicodeScalarView()
        for i in scalars.indices {
            out.append(scalars[i])
            let opensBar = scalars[i] == "<" && i + 1 < scalars.count && scalars[i + 1] == "|"
            if opensBar || cuts.contains(where: { startsWith(scalars, at: i, $0) }) {
                out.append(wordJoiner)
            }
        }
        return String(out)
    }

    static func startsWith(_ scalars: [Unicode.Scalar], at start: Int, _ prefix: [Unicode.Scalar]) -> Bool {
        guard start + prefix.count <= scalars.count else { return false }
        for k in 0..<prefix.count where scalars[start + k] != prefix[k] { return false }
        return true
    }
}
