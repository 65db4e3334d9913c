"""Ids and names every part of the toolkit agrees on, defined once.

Token ids (every tokenizer keeps them; :class:`asr.text.Tokenizer`):

* ``BLANK`` (0): the CTC and transducer blank, the padding of token tensors and the transducer
  predictor's start symbol;
* ``UNK`` (1): an unknown character or piece;
* ``EOS`` (2): ``<sos/eos>``, the end of a sentence and the attention decoder's start symbol.

Keyword-spotting class names: ``SILENCE`` (background noise, no speech) and ``UNKNOWN`` (speech
that is none of the keywords); ``NON_KEYWORDS`` holds both.
"""

BLANK = 0
UNK = 1
EOS = 2
BLANK_TOKEN, UNK_TOKEN, EOS_TOKEN = "<blank>", "<unk>", "<sos/eos>"

SILENCE = "_silence_"
UNKNOWN = "_unknown_"
NON_KEYWORDS = (SILENCE, UNKNOWN)
