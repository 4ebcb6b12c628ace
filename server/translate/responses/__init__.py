"""OpenAI's Responses API (`/v1/responses`): a caller's side only, as a door's dialect."""
