"""Device gateway: decodes BLE FTMS / Heart Rate / ANT+ frames into the wire contract (issue 4)."""
