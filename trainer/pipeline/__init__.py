"""The OD API's pipeline.config: its schema and the rules that honour or refuse each field."""
