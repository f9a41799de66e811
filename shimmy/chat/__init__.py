"""The protocol-neutral chat layer between the API translators and the engine.

One ``ChatRequest`` (messages, tools, sampling, format, thinking) goes in; one stream of
``events`` (text, thinking, tool-call pieces, the finish with usage) comes out. Each API
(OpenAI Chat and Responses, Anthropic, Ollama) translates into the request and out of the
events in its own module; none of them knows another.
"""
