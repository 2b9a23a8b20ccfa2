"""Code generation: the resolved architecture -> a family's files (render), its plans, its diagram, the parts."""
