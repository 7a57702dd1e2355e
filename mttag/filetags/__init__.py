"""Tags inside the user's audio files: reading what is there (reader) and writing mttag's tags
atomically, verified, with a signed undo log (writer)."""
