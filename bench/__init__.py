"""SurveyMesh benchmarks: each module measures one target against a baseline in the same run."""
