"""The pybullet grasping cell: a tray of random_urdfs objects, a floating parallel gripper,
a top-down RGB camera and the paper's six conditions."""
