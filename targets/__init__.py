"""Boards, firmware builds, the serial device protocol, flasher, runners and the MQTT edge agent."""
