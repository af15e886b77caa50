"""The learned compressor in one place: its config, the conv heads, their persistence, the LoCoCo policy
(the compression step) and the heads shipped for the reference model."""
