"""A prompt string from prompt data, as the reference's ``create_prompt`` renders it."""


def create_prompt(prompt_data, sentence=None):
    """Instructions, each example (input prefix, input, separator, output prefix, output, separator), then the query
    (``sentence``, else the prompt data's query input) up to the output prefix."""
    pre, sep = prompt_data["prefixes"], prompt_data["separators"]
    if sentence is None:
        sentence = prompt_data["query_target"]["input"]
    sentence = sentence[0] if isinstance(sentence, list) else sentence
    text = pre["instructions"] + prompt_data["instructions"] + sep["instructions"]
    for ex in prompt_data["examples"]:
        text += pre["input"] + ex["input"] + sep["input"] + pre["output"] + ex["output"] + sep["output"]
    return text + pre["input"] + sentence + sep["input"] + pre["output"]


def prompt_pieces(prompt_data, sentence=None):
    """The pieces ``create_prompt`` joins, each with its role: ``"template"`` (prefixes, separators, instructions)
    or ``"word"`` (an example's input or output, the query)."""
    pre, sep = prompt_data["prefixes"], prompt_data["separators"]
    if sentence is None:
        sentence = prompt_data["query_target"]["input"]
    sentence = sentence[0] if isinstance(sentence, list) else sentence
    pieces = [(pre["instructions"], "template"), (prompt_data["instructions"], "template"),
              (sep["instructions"], "template")]
    for ex in prompt_data["examples"]:
        pieces += [(pre["input"], "template"), (ex["input"], "word"), (sep["input"], "template"),
                   (pre["output"], "template"), (ex["output"], "word"), (sep["output"], "template")]
    pieces += [(pre["input"], "template"), (sentence, "word"), (sep["input"], "template"), (pre["output"], "template")]
    return [(text, role) for text, role in pieces if text]
