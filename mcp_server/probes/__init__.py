"""Probe files: each is run as a script by `mcp_server.probe` in another interpreter (the trainer's,
or ours for amdsmi), never imported by the server, and prints one JSON object on its last line.

torch_probe  torch's version, build, devices and their UUIDs (pre-flight, the memory check)
data_probe   one sample of an input decodes (pre-flight's data checks)
amd_probe    what ROCm's amdsmi reports (the amdsmi GPU backend)

They import only the standard library and what they probe: `mcp_server` may not be importable
where they run. A package only so that the wheel carries them.
"""
