"""Reading model output in the syntax of its family: thinking, text and tool calls.

``detect_syntax`` names the family from the chat template; ``OutputParser`` turns the
generated text, as it arrives, into ``shimmy.chat.events`` events.
"""

from shimmy.chat.syntax.detect import (
    SYNTAXES,
    detect_syntax,
    needs_special_tokens,
    opens_thinking,
)
from shimmy.chat.syntax.parser import OutputParser

__all__ = ["SYNTAXES", "OutputParser", "detect_syntax", "needs_special_tokens",
           "opens_thinking"]
