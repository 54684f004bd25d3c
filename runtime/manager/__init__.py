"""The manager: the hub that holds the fleet's registry, tokens, chats, tasks and approvals."""
