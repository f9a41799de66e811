"""The CLI's commands other than serve, one module each."""
