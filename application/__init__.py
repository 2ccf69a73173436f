"""The application: `SessionsApplication` commands and the ports infrastructure implements."""
