"""Pure decisions: task lifecycle, placement. No sockets, files, databases or clocks here."""
