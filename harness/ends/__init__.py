"""The simulated ends (the model upstream, the Telegram Bot API, scripted WebSocket peers) and the test's hands on them."""
