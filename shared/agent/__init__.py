"""The Code-as-Action agent format: prompts, rendering episodes to chat, parsing model turns."""
