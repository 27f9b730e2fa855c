package dev.llamamobile.core

/**
 * User text never becomes control tokens: the rule of neutralize_specials in llama_mobile/core/tokenizer.py
 * (read its docstring), held to one output by tests/vectors/injection.json.
 *
 * ExecuTorch's runner takes the prompt as a string and turns every special token written in it
 * (<|im_end|>, <|eot_id|>, ...) into its id, so a message that spells one would close its turn or forge a
 * Llama Guard verdict. In text from a user a WORD JOINER (U+2060) is therefore inserted after the "<" of
 * every "<|" and after the first character of every occurrence of one of [MARKERS] (and of the [extra]
 * strings longer than one code point). The joiner is invisible; the template's own control tokens are not
 * user text and keep their ids.
 */
object ControlTokens {
    const val WORD_JOINER = "\u2060"

    /** The special tokens of the embedded SmolLM2 tokenizer that do not begin with "<|" (StarCoder's markers). */
    val MARKERS: List<String> = listOf(
        "<repo_name>", "<reponame>", "<file_sep>", "<filename>", "<gh_stars>", "<issue_start>",
        "<issue_comment>", "<issue_closed>", "<jupyter_start>", "<jupyter_text>", "<jupyter_code>",
        "<jupyter_output>", "<jupyter_script>", "<empty_output>"
    )

    fun neutralize(text: String, extra: List<String> = emptyList()): String {
        // Python's len() counts code points; a one-code-point string cannot be cut and is ignored there too.
        val cuts = (MARKERS + extra).filter { it.codePointCount(0, it.length) > 1 && !it.startsWith("<|") }
        val out = StringBuilder(text.length + 8)
        var i = 0
        while (i < text.length) {
            // Whole code points, as Python walks the text; every string matched here is compared by UTF-16 units,
            // which for well-formed text finds exactly the code-point matches.
            val end = i + Character.charCount(text.codePointAt(i))
            out.append(text, i, end)
            val cut = (text[i] == '<' && text.startsWith("|", i + 1)) || cuts.any { text.startsWith(it, i) }
            if (cut) out.append(WORD_JOINER)
            i = end
        }
        return out.toString()
    }
}
