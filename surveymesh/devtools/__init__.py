"""Developer tools: code generation and checks that are not part of the runtime."""
