"""The Telegram front end: python-telegram-bot on one side, the manager's control API and event stream on the other."""
